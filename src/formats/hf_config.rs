//! `config.json` of Hugging Face `gpt2` and `llama` models, read into [`ModelConfig`] and written back
//! in the form `transformers` expects. Options we do not implement are errors, never ignored.

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig};
use serde_json::{json, Value};
use std::path::Path;

struct Fields<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, msg: String) -> Error {
        Error::bad_file(self.path, msg)
    }
    fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => {
                default.ok_or_else(|| self.err(format!("missing field '{key}'")))
            }
            Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.err(format!(
                    "field '{key}' must be a non-negative integer, got {x}"
                ))
            }),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.err(format!("field '{key}' must be a number, got {x}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| self.err(format!("field '{key}' must be true or false, got {x}"))),
        }
    }
    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_str()
                .ok_or_else(|| self.err(format!("field '{key}' must be a string, got {x}"))),
        }
    }
    /// Token ids may be an int or a list of ints (then the first is taken).
    fn token_id(&self, key: &str) -> Option<u32> {
        match self.v.get(key)? {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::Array(a) => a.first()?.as_u64().map(|n| n as u32),
            _ => None,
        }
    }
}

/// Reads `config.json` (at `path`) into a model config.
pub fn parse_hf_config(v: &Value, path: &Path) -> Result<ModelConfig> {
    let f = Fields { v, path };
    let model_type = v.get("model_type").and_then(Value::as_str).ok_or_else(|| {
        f.err("missing field 'model_type' (expected \"gpt2\" or \"llama\")".into())
    })?;
    let mut cfg = match model_type {
        "gpt2" => gpt2_config(&f)?,
        "llama" => llama_config(&f, v)?,
        other => {
            return Err(f.err(format!(
            "model_type '{other}' is not supported; chatforge loads \"gpt2\" and \"llama\" models"
        )))
        }
    };
    cfg.bos_token_id = f.token_id("bos_token_id");
    cfg.eos_token_id = f.token_id("eos_token_id");
    if let Err((field, value, max)) = cfg.check_sizes() {
        return Err(f.err(format!(
            "field '{}' = {value} is outside 1..={max}; is this config.json damaged?",
            hf_field(cfg.family, field)
        )));
    }
    cfg.validate().map_err(|e| f.err(e.to_string()))?;
    Ok(cfg)
}

/// The config.json key behind one of [`ModelConfig`]'s sizes.
fn hf_field(family: Family, ours: &str) -> &str {
    match (family, ours) {
        (Family::Gpt2, "context") => "n_positions",
        (Family::Gpt2, "intermediate") => "n_inner",
        (Family::Gpt2, "n_kv_head") => "n_head",
        (Family::Gpt2, "head_dim") => "n_embd / n_head",
        (Family::Llama, "context") => "max_position_embeddings",
        (Family::Llama, "n_layer") => "num_hidden_layers",
        (Family::Llama, "n_head") => "num_attention_heads",
        (Family::Llama, "n_kv_head") => "num_key_value_heads",
        (Family::Llama, "n_embd") => "hidden_size",
        (Family::Llama, "intermediate") => "intermediate_size",
        (_, other) => other,
    }
}

/// The `config.json` that `transformers` reads for this model.
pub fn to_hf_config(cfg: &ModelConfig) -> Value {
    match cfg.family {
        Family::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.context,
            "n_ctx": cfg.context,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.intermediate,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_range": 0.02,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": true,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "torch_dtype": "float32",
            "use_cache": true,
        }),
        Family::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd,
            "intermediate_size": cfg.intermediate,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.context,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_bias": cfg.attn_bias,
            "mlp_bias": cfg.mlp_bias,
            "attention_dropout": 0.0,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
            "use_cache": true,
        }),
    }
}

/// A GPT-2 config.json's fields (HF's defaults where it leaves them out).
fn gpt2_config(f: &Fields) -> Result<ModelConfig> {
    let n_embd = f.usize_or("n_embd", Some(768))?;
    let mut c = ModelConfig::gpt2(
        f.usize_or("n_layer", Some(12))?,
        f.usize_or("n_head", Some(12))?,
        n_embd,
        f.usize_or("vocab_size", None)?,
        f.usize_or("n_positions", Some(1024))?,
    );
    c.intermediate = f.usize_or("n_inner", Some(4 * n_embd))?;
    c.norm_eps = f.f64_or("layer_norm_epsilon", 1e-5)?;
    c.tie_embeddings = f.bool_or("tie_word_embeddings", true)?;
    let act = f.str_or("activation_function", "gelu_new")?;
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
        return Err(f.err(format!(
            "activation_function '{act}' is not supported; chatforge implements GPT-2's tanh GELU (\"gelu_new\")"
        )));
    }
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(f.err("scale_attn_by_inverse_layer_idx = true is not supported".into()));
    }
    if !f.bool_or("scale_attn_weights", true)? {
        return Err(f.err("scale_attn_weights = false is not supported".into()));
    }
    Ok(c)
}

/// A Llama config.json's fields, with the rope parameters where transformers 4 or 5 put them.
fn llama_config(f: &Fields, v: &Value) -> Result<ModelConfig> {
    let hidden = f.usize_or("hidden_size", None)?;
    let heads = f.usize_or("num_attention_heads", None)?;
    let mut c = ModelConfig::llama(
        f.usize_or("num_hidden_layers", None)?,
        heads,
        f.usize_or("num_key_value_heads", Some(heads))?,
        hidden,
        f.usize_or("intermediate_size", None)?,
        f.usize_or("vocab_size", None)?,
        f.usize_or("max_position_embeddings", Some(2048))?,
        f.bool_or("tie_word_embeddings", false)?,
    );
    if heads == 0 {
        return Err(f.err("num_attention_heads must be positive".into()));
    }
    c.head_dim = f.usize_or("head_dim", Some(hidden / heads))?;
    c.norm_eps = f.f64_or("rms_norm_eps", 1e-6)?;
    c.attn_bias = f.bool_or("attention_bias", false)?;
    c.mlp_bias = f.bool_or("mlp_bias", false)?;
    // transformers 5 moved rope_theta into rope_parameters.
    let rope = v
        .get("rope_parameters")
        .or_else(|| v.get("rope_scaling"))
        .filter(|r| !r.is_null());
    c.rope_theta = match rope
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
    {
        Some(t) => t,
        None => f.f64_or("rope_theta", 10_000.0)?,
    };
    if let Some(r) = rope {
        let kind = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(f.err(format!(
                "rope scaling type '{kind}' is not supported; only plain RoPE (\"default\") is"
            )));
        }
    }
    let act = f.str_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(f.err(format!(
            "hidden_act '{act}' is not supported; Llama models use \"silu\""
        )));
    }
    Ok(c)
}
