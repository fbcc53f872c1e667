//! The GGUF header (magic, metadata, tensor directory) read from the file's bytes with every size
//! checked against what is left of the file before anything is allocated, so that a crafted or
//! truncated file is an error, never an abort or a panic. The result is candle's `Content`, whose
//! tensor data the loader then slices out of the same memory map.
//!
//! Format (v2/v3, little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count,
//! metadata (string key, u32 type, value), tensor infos (string name, u32 n_dims, n_dims × u64
//! dims innermost first, u32 ggml type, u64 offset into the data section), padding to
//! `general.alignment` (default 32), the data section.

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;

/// Nested arrays deeper than this are refused (llama.cpp's files use one level).
const MAX_VALUE_DEPTH: usize = 4;
/// Elements of one tensor at most (2^40, about a trillion: far above any model file).
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// Array elements in all of the metadata at most (each becomes a 32-byte value in memory; a
/// vocabulary of 256k tokens with its merges and types needs under a million).
const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
const DEFAULT_ALIGNMENT: u64 = 32;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Array elements read so far (bounded by `MAX_ARRAY_ELEMENTS`).
    array_elements: u64,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() as u64 {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, but the file ends {} bytes later (truncated?)",
                self.pos,
                self.left()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        let mut s = self.take(n, what)?;
        // Some writers terminate strings with NULs although the format does not.
        while let [rest @ .., 0] = s {
            s = rest;
        }
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, String> {
        let b = |c: &mut Self, n| c.take(n, key);
        Ok(match ty {
            0 => Value::U8(b(self, 1)?[0]),
            1 => Value::I8(b(self, 1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => match b(self, 1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                x => {
                    return Err(format!(
                        "metadata '{key}': boolean byte {x} is neither 0 nor 1"
                    ))
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_VALUE_DEPTH}"
                    ));
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                let min = min_value_size(elem_ty)
                    .ok_or_else(|| format!("metadata '{key}': unknown element type {elem_ty}"))?;
                self.array_elements = self.array_elements.saturating_add(n);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "metadata '{key}': more than {MAX_ARRAY_ELEMENTS} array elements in all"
                    ));
                }
                if n.saturating_mul(min) > self.left() as u64 {
                    return Err(format!(
                        "metadata '{key}': an array of {n} elements cannot fit in the {} bytes left",
                        self.left()
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => return Err(format!("metadata '{key}': unknown value type {t}")),
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` takes on disk.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// ggml's type ids for the formats candle can hold.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match id {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        30 => BF16,
        _ => return None,
    })
}

/// Bytes a tensor of `dtype` with `elems` elements takes in the data section.
pub fn tensor_bytes(dtype: GgmlDType, elems: u64) -> u64 {
    elems / dtype.block_size() as u64 * dtype.type_size() as u64
}

/// Reads and checks the header of a GGUF file held in `bytes`. Every tensor's data is known to lie
/// inside `bytes` afterwards: at `tensor_data_offset + offset`, `tensor_bytes` long.
pub fn read_header(bytes: &[u8]) -> Result<Content, String> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        array_elements: 0,
    };
    if c.take(4, "the magic number")? != b"GGUF" {
        return Err("not a GGUF file (it does not start with \"GGUF\")".into());
    }
    let magic = match c.u32("the version")? {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => {
            return Err(format!(
                "GGUF version {v} is not supported (2 and 3 are); re-convert the model with a current llama.cpp"
            ))
        }
    };
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    // Each metadata entry takes at least 13 bytes and each tensor info 24: counts that cannot fit
    // are refused before any table is sized by them.
    if n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24))
        > c.left() as u64
    {
        return Err(format!(
            "the header declares {n_tensors} tensors and {n_kv} metadata entries, more than the file's {} bytes can hold (truncated?)",
            bytes.len()
        ));
    }
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string("a metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata '{key}' appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(format!(
                "metadata 'general.alignment' must be a power of two stored as u32, got {v:?}"
            ))
        }
    };
    let infos = (0..n_tensors)
        .map(|_| tensor_entry(&mut c))
        .collect::<Result<Vec<_>, String>>()?;
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    let mut tensor_infos = HashMap::new();
    for (name, dims, dtype, offset) in infos {
        let info = placed(&name, &dims, dtype, offset, (alignment, data_len))?;
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(format!("tensor '{name}' appears twice"));
        }
    }
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data_start,
    })
}

/// One entry of the tensor table: name, dimensions (innermost first), type, data offset.
fn tensor_entry(c: &mut Cursor) -> Result<(String, Vec<u64>, GgmlDType, u64), String> {
    let name = c.string("a tensor name")?;
    let n_dims = c.u32(&name)?;
    if !(1..=4).contains(&n_dims) {
        return Err(format!(
            "tensor '{name}': {n_dims} dimensions (1 to 4 allowed)"
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(&name)?);
    }
    let type_id = c.u32(&name)?;
    let dtype = ggml_dtype(type_id).ok_or_else(|| {
        format!("tensor '{name}': ggml type {type_id} is not supported by chatforge")
    })?;
    let offset = c.u64(&name)?;
    Ok((name, dims, dtype, offset))
}

/// A tensor entry checked against the data section (`alignment`, `data_len` bytes): a possible
/// shape, whole blocks per row, an aligned offset, and data inside the file.
fn placed(
    name: &str,
    dims: &[u64],
    dtype: GgmlDType,
    offset: u64,
    (alignment, data_len): (u64, u64),
) -> Result<TensorInfo, String> {
    let elems = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n > 0 && n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| format!("tensor '{name}': impossible shape {dims:?}"))?;
    if !dims[0].is_multiple_of(dtype.block_size() as u64) {
        return Err(format!(
            "tensor '{name}': rows of {} elements do not divide into {dtype:?} blocks of {}",
            dims[0],
            dtype.block_size()
        ));
    }
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor '{name}': offset {offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let size = tensor_bytes(dtype, elems);
    if offset.checked_add(size).is_none_or(|end| end > data_len) {
        return Err(format!(
            "tensor '{name}': {size} bytes at data offset {offset} run past the end of the file (truncated?)"
        ));
    }
    // ggml lists dimensions innermost first; candle's shapes are outermost first.
    let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
    Ok(TensorInfo {
        ggml_dtype: dtype,
        shape: shape.into(),
        offset,
    })
}
