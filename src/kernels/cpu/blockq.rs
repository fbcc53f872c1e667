//! Block-quantized weights for inference: each row of a weight (out, in) in blocks of 32 values,
//! byte for byte as GGML lays them out, so a GGUF file's tensors are copied in, never expanded:
//!
//! - [`Format::Q4`] (Q4_1): an f16 scale d, an f16 minimum m, 16 bytes of 4-bit codes q (value
//!   t < 16 in the low nibble of byte t, 16 + t in its high one), value = d q + m; 20 bytes a block.
//! - [`Format::Q8`] (Q8_0): an f16 scale d and 32 signed 8-bit codes, value = d q; 34 bytes a
//!   block.
//!
//! Both multiply 8-bit activations, as llama.cpp does (`blockq_int8`), so a GGUF file decodes here
//! as it does in llama.cpp.
//!
//! Why: decoding reads every weight once per token and is bound by memory; candle's Q4_1 kernel is
//! scalar. A model loaded as f32 quantizes into the same blocks ([`BlockWeight::quantize`]); a GGUF
//! file's Q4_1 and Q8_0 tensors also come back exactly from their dequantized f32 weights
//! ([`BlockWeight::quantize_exact`]): each Q4_1 block spans its codes' full range (its minimum has
//! code 0, its maximum 15) and each Q8_0 block reaches code +-127 at its largest value.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use half::f16;

pub use super::blockq_int8::Format;
use super::blockq_int8::{f16_at, QK};

/// A weight (rows, cols) in blocks of 32 along its rows.
pub struct BlockWeight {
    format: Format,
    rows: usize,
    cols: usize,
    /// rows * cols / 32 blocks of `format.block_bytes()`, row after row.
    blocks: Vec<u8>,
}

impl BlockWeight {
    /// The quantized copy of w (rows, cols) on the CPU, or None where the rows do not split into
    /// blocks of 32.
    pub fn quantize(w: &Tensor, format: Format) -> Result<Option<Self>> {
        Ok(Self::values(w)?.map(|(data, rows, cols)| Self::of(&data, rows, cols, format)))
    }

    /// A weight (rows, cols) from blocks in GGML's layout of `format` (a GGUF tensor's bytes).
    pub fn from_ggml(format: Format, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let want = rows
            .checked_mul(cols / QK)
            .and_then(|b| b.checked_mul(format.block_bytes()));
        if !cols.is_multiple_of(QK) || want != Some(bytes.len()) {
            return Err(Error::Mismatch(format!(
                "{format:?} blocks of {} bytes for a ({rows}, {cols}) weight",
                bytes.len()
            )));
        }
        let scales = match format {
            Format::Q4 => 2,
            Format::Q8 => 1,
        };
        for (b, block) in bytes.chunks_exact(format.block_bytes()).enumerate() {
            if (0..scales).any(|s| !f16_at(block, 2 * s).is_finite()) {
                return Err(Error::Mismatch(format!(
                    "block {b} holds NaN or infinity; the file is damaged"
                )));
            }
        }
        Ok(BlockWeight {
            format,
            rows,
            cols,
            blocks: bytes.to_vec(),
        })
    }

    /// w's values and shape, where its rows split into blocks of 32 and it is on the CPU.
    fn values(w: &Tensor) -> Result<Option<(Vec<f32>, usize, usize)>> {
        let (rows, cols) = w.dims2()?;
        if !cols.is_multiple_of(QK) || !w.device().is_cpu() {
            return Ok(None);
        }
        let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some((data, rows, cols)))
    }

    /// The blocks of `data` (rows, cols), cols a multiple of 32, as GGML quantizes them.
    fn of(data: &[f32], rows: usize, cols: usize, format: Format) -> Self {
        let bb = format.block_bytes();
        let mut blocks = vec![0u8; rows * cols / QK * bb];
        for (vals, out) in data.chunks_exact(QK).zip(blocks.chunks_exact_mut(bb)) {
            let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            match format {
                Format::Q4 => {
                    let d = (max - min) / 15.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let code = |v: f32| ((v - min) * inv).round().clamp(0.0, 15.0) as u8;
                    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
                    for j in 0..QK / 2 {
                        out[4 + j] = code(vals[j]) | (code(vals[j + QK / 2]) << 4);
                    }
                }
                Format::Q8 => {
                    let d = max.abs().max(min.abs()) / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    for (o, v) in out[2..].iter_mut().zip(vals) {
                        *o = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                    }
                }
            }
        }
        BlockWeight {
            format,
            rows,
            cols,
            blocks,
        }
    }

    /// [`BlockWeight::quantize`] where that holds w exactly (to within 1e-6 of its largest value),
    /// as it does a file's blocks of this format, dequantized; None otherwise.
    pub fn quantize_exact(w: &Tensor, format: Format) -> Result<Option<Self>> {
        let Some((data, rows, cols)) = Self::values(w)? else {
            return Ok(None);
        };
        let q = Self::of(&data, rows, cols, format);
        let top = data.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = q
            .dequantize()
            .iter()
            .zip(&data)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        Ok((worst <= 1e-6 * top).then_some(q))
    }

    /// The weight as f32 (rows, cols): the values [`BlockWeight::matmul_t`] multiplies.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        dequantize_into(self.format, &self.blocks, &mut out);
        out
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The rows of `parts` one after the other: one weight for projections that run together
    /// (query, key and value). They must share a format and a width.
    pub fn concat_rows(parts: &[BlockWeight]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Mismatch("no weights to join".into()))?;
        if let Some(p) = parts
            .iter()
            .find(|p| p.format != first.format || p.cols != first.cols)
        {
            return Err(Error::Mismatch(format!(
                "joining {:?} blocks of width {} with {:?} blocks of width {}",
                first.format, first.cols, p.format, p.cols
            )));
        }
        Ok(BlockWeight {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            blocks: parts
                .iter()
                .map(|p| p.blocks.as_slice())
                .collect::<Vec<_>>()
                .concat(),
        })
    }

    /// The weight whose row i is this one's row order[i] (order a permutation of the rows).
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        assert_eq!(order.len(), self.rows, "a permutation of every row");
        BlockWeight {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            blocks: order
                .iter()
                .map(|&j| self.row(j))
                .collect::<Vec<_>>()
                .concat(),
        }
    }

    /// Rows `ids` as f32, one after the other (an embedding lookup); an id past the last row is an
    /// error.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                return Err(Error::Mismatch(format!(
                    "token id {id} is past the embedding's {} rows",
                    self.rows
                )));
            }
            dequantize_into(self.format, self.row(id), &mut out);
        }
        Ok(out)
    }

    /// Row j's blocks.
    fn row(&self, j: usize) -> &[u8] {
        let len = self.cols / QK * self.format.block_bytes();
        &self.blocks[j * len..][..len]
    }

    /// x (..., cols) f32 times the weight's transpose -> (..., rows) f32, x quantized to 8 bits
    /// per block: the output rows split over the cores, each weight row read from memory once for
    /// all rows of x (it stays in cache between them).
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.cols;
        if x.dims().last() != Some(&k) {
            return Err(Error::Mismatch(format!(
                "quantized weight of {k} inputs for rows of {:?}",
                x.dims()
            )));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let r = xs.len() / k;
        let n = self.rows;
        // out is (n, r), row j holding output column j for every row of x; transposed at the end.
        let x8 = super::blockq_int8::Int8Rows::of(&xs);
        let per_task = super::parallel::items_per_task(n, r * k, 8);
        let out = super::parallel::filled(n * r, per_task * r, |ci, chunk| {
            for (jj, o) in chunk.chunks_exact_mut(r).enumerate() {
                let j = ci * per_task + jj;
                super::blockq_int8::row_dot(self.format, self.row(j), &x8, o);
            }
        });
        let y = match r {
            1 => out,
            _ => {
                let mut y = vec![0f32; r * n];
                for (j, o) in out.chunks_exact(r).enumerate() {
                    for (i, v) in o.iter().enumerate() {
                        y[i * n + j] = *v;
                    }
                }
                y
            }
        };
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("checked above") = n;
        Ok(Tensor::from_vec(y, dims, x.device())?)
    }
}

/// Appends the values of `blocks` (whole blocks of `format`) to `out`.
fn dequantize_into(format: Format, blocks: &[u8], out: &mut Vec<f32>) {
    for b in blocks.chunks_exact(format.block_bytes()) {
        let d = f16_at(b, 0);
        match format {
            Format::Q4 => {
                let (m, q) = (f16_at(b, 2), &b[4..]);
                out.extend(q.iter().map(|c| d * (c & 15) as f32 + m));
                out.extend(q.iter().map(|c| d * (c >> 4) as f32 + m));
            }
            Format::Q8 => out.extend(b[2..].iter().map(|&c| d * c as i8 as f32)),
        }
    }
}
