//! GGUF files (llama.cpp's format) with the `llama` or `gpt2` architecture: metadata into the
//! model config, tensors under our names (`gguf_names`: llama.cpp's names and layouts; dequantised
//! to f32, or on the CPU Q4_1 and Q8_0 ones kept in blocks, `gguf_blocks`), the tokenizer rebuilt
//! from the vocabulary and merges (`gguf_tokenizer`), and the chat template.

use super::gguf_header::{read_header, tensor_bytes};
use super::gguf_names::{from_gguf_layout, gguf_name, Layout};
use super::hf::weights_from_hf_except;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::ops::linear::BlockWeights;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// An opened GGUF file: its checked header and the file's bytes, memory-mapped.
pub struct GgufFile {
    pub(super) path: std::path::PathBuf,
    pub(super) content: Content,
    pub(super) bytes: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap reader we assume nobody truncates
        // it while we hold the map.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let content = read_header(&bytes)
            .map_err(|e| Error::bad_file(path, format!("not a readable GGUF file: {e}")))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            bytes,
        })
    }

    /// The quantized format the layers' matrices are stored in (judged by the first feed-forward
    /// projection), None for float ones: inference then keeps them quantized instead of f32
    /// (`LoadedModel::inference_transformer`).
    pub fn quantization(&self) -> Option<GgmlDType> {
        let t = self.content.tensor_infos.get("blk.0.ffn_down.weight")?;
        (!matches!(
            t.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ))
        .then_some(t.ggml_dtype)
    }

    pub(super) fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::bad_file(&self.path, msg)
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(format!("missing metadata '{key}'")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            self.err(format!(
                "metadata '{key}' must be a non-negative integer, got {v:?}"
            ))
        })
    }

    /// A number; an f32 is read as the decimal it was written from (1e-5, not 9.99999974e-6), so
    /// that a config converted from the file says what the model's own says.
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(|x| x.to_string().parse().unwrap_or(f64::from(x)))
                .or_else(|_| v.to_f64())
                .map_err(|_| self.err(format!("metadata '{key}' is not a number"))),
        }
    }

    pub(super) fn string(&self, key: &str) -> Option<String> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok().cloned())
    }

    pub(super) fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|_| self.err(format!("metadata '{key}' is not an array")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.err(format!("metadata '{key}' holds a non-string")))
            })
            .collect()
    }

    /// The model config from the architecture's metadata (`llama.*` or `gpt2.*`).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.string("general.architecture").unwrap_or_default();
        if arch != "llama" && arch != "gpt2" {
            return Err(self.err(format!(
                "architecture '{arch}' is not supported; chatforge reads the llama and gpt2 \
                 architectures of GGUF files"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.usize(&key("attention.head_count"))?;
        let embd = self.usize(&key("embedding_length"))?;
        let vocab = match self.usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => self.strings("tokenizer.ggml.tokens")?.len(),
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let (layers, ff) = (
            self.usize(&key("block_count"))?,
            self.usize(&key("feed_forward_length"))?,
        );
        let context = self.usize(&key("context_length"))?;
        let mut cfg = if arch == "gpt2" {
            let mut c = ModelConfig::gpt2(layers, heads, embd, vocab, context);
            c.intermediate = ff;
            c.tie_embeddings = tied;
            c.norm_eps = self.f64_or(&key("attention.layer_norm_epsilon"), 1e-5)?;
            c
        } else {
            let kv_heads = self.usize(&key("attention.head_count_kv")).unwrap_or(heads);
            let mut c = ModelConfig::llama(layers, heads, kv_heads, embd, ff, vocab, context, tied);
            if self
                .content
                .metadata
                .contains_key(&key("attention.key_length"))
            {
                c.head_dim = self.usize(&key("attention.key_length"))?;
            }
            c.norm_eps = self.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?;
            c.rope_theta = self.f64_or(&key("rope.freq_base"), 10_000.0)?;
            c
        };
        cfg.bos_token_id = self
            .usize("tokenizer.ggml.bos_token_id")
            .ok()
            .map(|x| x as u32);
        cfg.eos_token_id = self
            .usize("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|x| x as u32);
        if let Err((field, value, max)) = cfg.check_sizes() {
            let name = match field {
                "vocab_size" => "vocab_size (or tokenizer.ggml.tokens)",
                "context" => "context_length",
                "n_layer" => "block_count",
                "n_head" => "attention.head_count",
                "n_kv_head" => "attention.head_count_kv",
                "n_embd" => "embedding_length",
                "head_dim" => "attention.key_length",
                _ => "feed_forward_length",
            };
            return Err(self.err(format!(
                "metadata '{arch}.{name}' = {value} is outside 1..={max}; is this file damaged?"
            )));
        }
        cfg.validate().map_err(|e| self.err(e))?;
        let in_file = self.layers_in_file();
        if in_file != cfg.n_layer {
            return Err(self.err(format!(
                "metadata '{arch}.block_count' is {} but the file holds tensors of {in_file} layers",
                cfg.n_layer
            )));
        }
        Ok(cfg)
    }

    /// Layers that have tensors (`blk.N.*`), counted as the highest N + 1.
    fn layers_in_file(&self) -> usize {
        self.content
            .tensor_infos
            .keys()
            .filter_map(|n| {
                n.strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|n| n + 1)
            .max()
            .unwrap_or(0)
    }

    /// One tensor, dequantised to f32. Its bytes lie inside the file (checked by `read_header`).
    fn tensor(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let err = |e: String| Error::bad_file(&self.path, format!("tensor '{name}': {e}"));
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| err("missing from the file".into()))?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let len = tensor_bytes(info.ggml_dtype, info.shape.elem_count() as u64) as usize;
        let data = &self.bytes[start..start + len];
        // candle reads the bytes as f32s or blocks in place: they must be aligned for that, which
        // a file with general.alignment below 8 does not promise (the map itself is page-aligned).
        let aligned: Vec<u64>;
        let data = if start.is_multiple_of(8) {
            data
        } else {
            let mut words = vec![0u64; len.div_ceil(8)];
            // SAFETY: any bytes are a valid u8 view of the u64 buffer, which holds >= len bytes.
            let view =
                unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
            view.copy_from_slice(data);
            aligned = words;
            // SAFETY: as above, read-only now.
            unsafe { std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), len) }
        };
        let q = qtensor_from_ggml(info.ggml_dtype, data, info.shape.dims().to_vec(), device)
            .map_err(|e| err(e.to_string()))?;
        let t = q.dequantize(device)?;
        crate::model::params::check_finite_tensor(name, &t, &self.path.display().to_string())?;
        Ok(t)
    }

    /// The weights under our internal names, as f32, except those `held` holds in blocks.
    pub fn weights(
        &mut self,
        cfg: &ModelConfig,
        held: &BlockWeights,
        device: &Device,
    ) -> Result<BTreeMap<String, Tensor>> {
        let path = self.path.clone();
        weights_from_hf_except(cfg, held, |hf_name, shape| {
            let (name, layout) = gguf_name(hf_name, cfg)
                .ok_or_else(|| Error::bad_file(&path, format!("no GGUF tensor for '{hf_name}'")))?;
            let t = self.tensor(&name, device)?;
            let mut want = shape.to_vec();
            if layout == Layout::Transposed {
                want.reverse();
            }
            if t.dims() != want {
                return Err(Error::Mismatch(format!(
                    "{}: tensor '{name}' has shape {:?} but the metadata implies {want:?}",
                    path.display(),
                    t.dims()
                )));
            }
            from_gguf_layout(t, layout)
        })
    }
}

/// A GGUF file's contents: config, weights (f32) and, on the CPU, the weights it stores as Q4_1
/// or Q8_0 blocks kept so instead, tokenizer, and the format its layers were quantized in.
pub struct GgufModel {
    pub cfg: ModelConfig,
    pub weights: BTreeMap<String, Tensor>,
    pub blocks: BlockWeights,
    pub tokenizer: Tokenizer,
    pub quantized: Option<GgmlDType>,
}

/// Whether a path is named as a GGUF file (`*.gguf`, any case): how a model path, an output
/// and a Hub file are told to be GGUF.
pub fn has_gguf_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Loads a GGUF file.
pub fn load_gguf(path: &Path, device: &Device) -> Result<GgufModel> {
    let mut f = GgufFile::open(path)?;
    let cfg = f.config()?;
    // The tokenizer and its fast encoder come first, and the file's token lists are let go once
    // they are built: what that allocates and frees is then reused by the weights instead of
    // adding to the peak beside them.
    let tokenizer = f.tokenizer()?;
    let _ = tokenizer.fast_encoding();
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    ] {
        f.content.metadata.remove(key);
    }
    let blocks = match device.is_cpu() {
        true => f.block_weights(&cfg)?,
        false => BlockWeights::new(),
    };
    let weights = f.weights(&cfg, &blocks, device)?;
    Ok(GgufModel {
        cfg,
        weights,
        blocks,
        tokenizer,
        quantized: f.quantization(),
    })
}
