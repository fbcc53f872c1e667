//! Writing a model as a GGUF file that llama.cpp (and Ollama, which runs llama.cpp) load: Llama
//! models as llama.cpp's `llama` architecture, GPT-2 models as its `gpt2` one, with their
//! tensors under llama.cpp's names and in its layouts (`gguf_names`), the model's metadata, the
//! tokenizer (`gguf_tokenizer`) and the chat template.
//!
//! Norms, biases and position embeddings stay f32, as llama.cpp's converter keeps them; the
//! matrices take the requested type, except that with a 4-bit type the token embedding and the
//! output projection take Q8_0 (llama.cpp's quantizer also gives those more bits), and a matrix
//! whose rows are not whole blocks falls back to f16.

use super::gguf_names::{gguf_name, to_gguf_layout};
use super::gguf_tokenizer::tokenizer_metadata;
use super::hf_names::weights_to_hf;
use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// The tensor types `convert --type` writes.
const EXPORT_TYPES: &str = "f32, f16, bf16, q8_0, q4_0 or q4_1";

/// `--type`'s value as a GGML type.
pub fn parse_export_type(s: &str) -> std::result::Result<GgmlDType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(GgmlDType::F32),
        "f16" => Ok(GgmlDType::F16),
        "bf16" => Ok(GgmlDType::BF16),
        "q8_0" => Ok(GgmlDType::Q8_0),
        "q4_0" => Ok(GgmlDType::Q4_0),
        "q4_1" => Ok(GgmlDType::Q4_1),
        _ => Err(format!("'{s}': expected {EXPORT_TYPES}")),
    }
}

/// llama.cpp's `llama_ftype` for a file whose matrices are mostly `t`.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        _ => 32, // BF16
    }
}

/// What was written: the number of tensors, and the matrices that fell back to f16.
pub struct GgufSummary {
    pub tensors: usize,
    pub fell_back: Vec<String>,
}

/// Writes `weights` (internal names, any float dtype) of a model of `cfg` with its tokenizer to
/// the GGUF file `path`, matrices as `dtype`. The file is written beside `path` and renamed into
/// place once complete.
pub fn save_gguf(
    path: &Path,
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
    tokenizer: &Tokenizer,
    dtype: GgmlDType,
    name: &str,
) -> Result<GgufSummary> {
    let tensors = gguf_tensors(cfg, weights)?;
    let mut metadata = model_metadata(cfg, dtype, name);
    metadata.extend(tokenizer_metadata(tokenizer, cfg)?);
    let mut quantized = Vec::with_capacity(tensors.len());
    let mut summary = GgufSummary {
        tensors: tensors.len(),
        fell_back: Vec::new(),
    };
    for (gname, t) in tensors {
        let want = tensor_type(&gname, &t, dtype);
        let cols = *t.dims().last().unwrap_or(&1);
        let ty = if cols.is_multiple_of(want.block_size()) {
            want
        } else {
            summary.fell_back.push(gname.clone());
            GgmlDType::F16
        };
        // A fresh f32 copy: candle's quantizer reads a tensor's storage from its start, which
        // for a view (a q, k or v part of a joined projection) is not where its values begin.
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let dense = Tensor::from_vec(values, t.shape(), &Device::Cpu)?;
        let q = QTensor::quantize(&dense, ty)
            .map_err(|e| Error::Config(format!("tensor '{gname}': {e}")))?;
        quantized.push((gname, q));
    }
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let qs: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, q)| (k.as_str(), q)).collect();
    crate::fsutil::write_atomic_with(path, |w| {
        gguf_file::write(w, &meta, &qs)
            .map_err(|e| Error::bad_file(path, format!("could not write the GGUF file: {e}")))
    })?;
    Ok(summary)
}

/// The type a tensor is stored in when the file's matrices are `dtype`.
fn tensor_type(gguf_name: &str, t: &Tensor, dtype: GgmlDType) -> GgmlDType {
    if t.rank() < 2 || gguf_name == "position_embd.weight" {
        return GgmlDType::F32;
    }
    let four_bit = matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1);
    if four_bit && matches!(gguf_name, "token_embd.weight" | "output.weight") {
        return GgmlDType::Q8_0;
    }
    dtype
}

/// `general.*` and the architecture's hyper-parameters.
fn model_metadata(cfg: &ModelConfig, dtype: GgmlDType, name: &str) -> Vec<(String, Value)> {
    let arch = match cfg.family {
        Family::Llama => "llama",
        Family::Gpt2 => "gpt2",
    };
    let u = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type(dtype))),
        (key("context_length"), u(cfg.context)),
        (key("embedding_length"), u(cfg.n_embd)),
        (key("block_count"), u(cfg.n_layer)),
        (key("feed_forward_length"), u(cfg.intermediate)),
        (key("attention.head_count"), u(cfg.n_head)),
    ];
    if matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1) {
        m.push(("general.quantization_version".into(), Value::U32(2)));
    }
    match cfg.family {
        Family::Gpt2 => m.push((
            key("attention.layer_norm_epsilon"),
            Value::F32(cfg.norm_eps as f32),
        )),
        Family::Llama => {
            m.extend([
                (key("vocab_size"), u(cfg.vocab_size)),
                (key("attention.head_count_kv"), u(cfg.n_kv_head)),
                (key("rope.dimension_count"), u(cfg.head_dim)),
                (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
                (
                    key("attention.layer_norm_rms_epsilon"),
                    Value::F32(cfg.norm_eps as f32),
                ),
            ]);
            if cfg.head_dim * cfg.n_head != cfg.n_embd {
                m.push((key("attention.key_length"), u(cfg.head_dim)));
                m.push((key("attention.value_length"), u(cfg.head_dim)));
            }
        }
    }
    m
}

/// The model's tensors under llama.cpp's names and in its layouts (`gguf_names`), from their HF
/// form: Llama's q/k/v and gate/up split, q/k rows (and biases) permuted; GPT-2's `Conv1D`
/// weights transposed back to (out, in). A tied model has no output.weight: llama.cpp then uses
/// the token embedding.
fn gguf_tensors(
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    weights_to_hf(cfg, weights)?
        .into_iter()
        .map(|(hf, t)| {
            let (name, layout) = gguf_name(&hf, cfg).ok_or_else(|| {
                Error::Config(format!(
                    "tensor '{hf}' has no name in llama.cpp's architecture for this model"
                ))
            })?;
            Ok((name, to_gguf_layout(t, layout)?))
        })
        .collect()
}
