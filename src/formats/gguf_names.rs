//! llama.cpp's tensor names and layouts against Hugging Face's, for the two architectures chatforge
//! reads and writes: `llama` (HF `LlamaForCausalLM`; llama.cpp's converter permutes the rows of
//! the query and key projections so that RoPE rotates interleaved pairs, where ours, like
//! transformers', rotates the two halves of each head) and `gpt2` (HF `GPT2LMHeadModel`, whose
//! `Conv1D` weights are stored `[in, out]`, where llama.cpp's are `(out, in)`).

use crate::error::Result;
use crate::model::config::{Family, ModelConfig};
use candle_core::Tensor;

/// How a tensor lies in a GGUF file, against its HF form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    Same,
    /// Query or key rows of this many heads, permuted as llama.cpp's converter permutes them.
    RopePermuted(usize),
    /// The transpose of the HF tensor (GPT-2's `Conv1D` weights).
    Transposed,
}

/// The GGUF name of an HF tensor of a model of `cfg`, and how it lies there.
pub(super) fn gguf_name(hf: &str, cfg: &ModelConfig) -> Option<(String, Layout)> {
    match cfg.family {
        Family::Llama => llama_name(hf, cfg),
        Family::Gpt2 => gpt2_name(hf),
    }
}

fn llama_name(hf: &str, cfg: &ModelConfig) -> Option<(String, Layout)> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), Layout::Same));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (stem, kind) = tail.rsplit_once('.')?;
    let (name, layout) = match (stem, kind) {
        ("input_layernorm", "weight") => ("attn_norm", Layout::Same),
        ("post_attention_layernorm", "weight") => ("ffn_norm", Layout::Same),
        (_, "weight" | "bias") => match stem {
            "self_attn.q_proj" => ("attn_q", Layout::RopePermuted(cfg.n_head)),
            "self_attn.k_proj" => ("attn_k", Layout::RopePermuted(cfg.n_kv_head)),
            "self_attn.v_proj" => ("attn_v", Layout::Same),
            "self_attn.o_proj" => ("attn_output", Layout::Same),
            "mlp.gate_proj" => ("ffn_gate", Layout::Same),
            "mlp.up_proj" => ("ffn_up", Layout::Same),
            "mlp.down_proj" => ("ffn_down", Layout::Same),
            _ => return None,
        },
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}.{kind}"), layout))
}

fn gpt2_name(hf: &str) -> Option<(String, Layout)> {
    let fixed = match hf {
        "transformer.wte.weight" => Some("token_embd.weight"),
        "transformer.wpe.weight" => Some("position_embd.weight"),
        "transformer.ln_f.weight" => Some("output_norm.weight"),
        "transformer.ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), Layout::Same));
    }
    let rest = hf.strip_prefix("transformer.h.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (stem, kind) = tail.rsplit_once('.')?;
    let name = match stem {
        "ln_1" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "ln_2" => "ffn_norm",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    let layout = match (stem.starts_with("ln_"), kind) {
        (false, "weight") => Layout::Transposed,
        (_, "weight" | "bias") => Layout::Same,
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}.{kind}"), layout))
}

/// The HF tensor of `t`, a tensor that lies in a GGUF file as `layout` says.
pub(super) fn from_gguf_layout(t: Tensor, layout: Layout) -> Result<Tensor> {
    match layout {
        Layout::Same => Ok(t),
        Layout::Transposed => Ok(t.t()?.contiguous()?),
        Layout::RopePermuted(heads) => swap_rope_rows(&t, heads, true),
    }
}

/// `t`, an HF tensor, as it lies in a GGUF file.
pub(super) fn to_gguf_layout(t: Tensor, layout: Layout) -> Result<Tensor> {
    match layout {
        Layout::Same => Ok(t),
        Layout::Transposed => Ok(t.t()?.contiguous()?),
        Layout::RopePermuted(heads) => swap_rope_rows(&t, heads, false),
    }
}

/// Within each head of (heads * D) rows (of any trailing shape): llama.cpp's interleaved pairs
/// to the two halves (`unpermute`), or back.
fn swap_rope_rows(w: &Tensor, heads: usize, unpermute: bool) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    let d = dims[0] / heads;
    let split = match unpermute {
        true => (heads, d / 2, 2, cols),
        false => (heads, 2, d / 2, cols),
    };
    Ok(w.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}
