//! A tiny llama-architecture GGUF file (the llama-tiny fixture's weights, a 128-token byte-level
//! vocabulary) for tests of the GGUF reader.

use super::fixtures;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use std::path::Path;

/// The llama-tiny fixture's weights under llama.cpp's names, with `meta` overriding the default
/// metadata (`None` removes a key).
pub fn write_gguf(path: &Path, meta: &[(&str, Option<Value>)]) {
    let st = candle_core::safetensors::load(
        fixtures().join("llama-tiny/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut names = vec![
        (
            "model.embed_tokens.weight".to_string(),
            "token_embd.weight".to_string(),
        ),
        ("model.norm.weight".into(), "output_norm.weight".into()),
        ("lm_head.weight".into(), "output.weight".into()),
    ];
    for l in 0..2 {
        for (hf, g) in [
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ] {
            names.push((
                format!("model.layers.{l}.{hf}.weight"),
                format!("blk.{l}.{g}.weight"),
            ));
        }
    }
    let tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|(hf, g)| {
            (
                g.clone(),
                QTensor::quantize(&st[hf], GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    // Printable ASCII stands for itself in byte-level BPE: "ab" is two tokens.
    let tokens: Vec<Value> = (0..128u8)
        .map(|i| match i {
            0..94 => Value::String(char::from(33 + i).to_string()),
            _ => Value::String(format!("<x{i}>")),
        })
        .collect();
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.context_length".into(), Value::U32(32)),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.feed_forward_length".into(), Value::U32(48)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
    ];
    for (k, v) in meta {
        m.retain(|(key, _)| key != k);
        if let Some(v) = v {
            m.push((k.to_string(), v.clone()));
        }
    }
    let meta_refs: Vec<(&str, &Value)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}
