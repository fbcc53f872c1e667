//! The one model config. Each switch is independent; GPT-2 and Llama-style models are presets of it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which Hugging Face architecture the model is saved as. It fixes the tensor names on disk; the
/// switches below must agree with it (checked by [`ModelConfig::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gpt2,
    Llama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    Learned,
    Rope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `proj(gelu_tanh(fc(x)))`, GPT-2's "gelu_new".
    Gelu,
    /// `down(silu(gate(x)) * up(x))`, Llama's.
    SwiGlu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    /// Longest sequence the model takes (GPT-2 `n_positions`, Llama `max_position_embeddings`).
    pub context: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads; fewer than `n_head` is grouped-query attention.
    pub n_kv_head: usize,
    pub n_embd: usize,
    pub head_dim: usize,
    /// Hidden width of the MLP (per branch for SwiGLU).
    pub intermediate: usize,
    pub positions: Positions,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub mlp: MlpKind,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    pub attn_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// GPT-2 shaped model: learned positions, LayerNorm with bias, GELU, tied embeddings.
    pub fn gpt2(
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        vocab_size: usize,
        context: usize,
    ) -> Self {
        ModelConfig {
            family: Family::Gpt2,
            vocab_size,
            context,
            n_layer,
            n_head,
            n_kv_head: n_head,
            n_embd,
            // 0 for zero heads, which `validate` refuses (no division by zero on the way).
            head_dim: n_embd.checked_div(n_head).unwrap_or(0),
            intermediate: 4 * n_embd,
            positions: Positions::Learned,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::Gelu,
            rope_theta: 10_000.0,
            tie_embeddings: true,
            attn_bias: true,
            mlp_bias: true,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Llama shaped model: RoPE, RMSNorm, SwiGLU, optional grouped-query attention.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        n_layer: usize,
        n_head: usize,
        n_kv_head: usize,
        n_embd: usize,
        intermediate: usize,
        vocab_size: usize,
        context: usize,
        tie_embeddings: bool,
    ) -> Self {
        ModelConfig {
            family: Family::Llama,
            vocab_size,
            context,
            n_layer,
            n_head,
            n_kv_head,
            n_embd,
            // 0 for zero heads, which `validate` refuses (no division by zero on the way).
            head_dim: n_embd.checked_div(n_head).unwrap_or(0),
            intermediate,
            positions: Positions::Rope,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::SwiGlu,
            rope_theta: 10_000.0,
            tie_embeddings,
            attn_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Named shapes. `vocab_size` and `context` replace the preset's when given.
    pub fn preset(name: &str, vocab_size: Option<usize>, context: Option<usize>) -> Result<Self> {
        let v = |d: usize| vocab_size.unwrap_or(d);
        let t = |d: usize| context.unwrap_or(d);
        let cfg = match name {
            // About two million parameters: learns tiny Shakespeare on a laptop CPU in minutes.
            "tiny" => ModelConfig::gpt2(4, 6, 192, v(2048), t(256)),
            "tiny-llama" => ModelConfig::llama(4, 6, 2, 192, 512, v(2048), t(256), true),
            "gpt2" | "gpt2-124m" => ModelConfig::gpt2(12, 12, 768, v(50257), t(1024)),
            "gpt2-medium" | "gpt2-350m" => ModelConfig::gpt2(24, 16, 1024, v(50257), t(1024)),
            "gpt2-large" | "gpt2-774m" => ModelConfig::gpt2(36, 20, 1280, v(50257), t(1024)),
            "gpt2-xl" | "gpt2-1.5b" => ModelConfig::gpt2(48, 25, 1600, v(50257), t(1024)),
            "smollm2-135m" => {
                let mut c = ModelConfig::llama(30, 9, 3, 576, 1536, v(49152), t(2048), true);
                c.rope_theta = 100_000.0;
                c
            }
            _ => {
                return Err(Error::Config(format!(
                    "unknown model preset '{name}'; valid presets: {}",
                    PRESETS.join(", ")
                )))
            }
        };
        Ok(cfg)
    }

    /// The first size outside its range, as (field, value, largest allowed); every size must also be
    /// positive.
    pub fn check_sizes(&self) -> std::result::Result<(), (&'static str, usize, usize)> {
        for (field, value, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("context", self.context, MAX_CONTEXT),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_HEADS),
            ("n_kv_head", self.n_kv_head, MAX_HEADS),
            ("n_embd", self.n_embd, MAX_WIDTH),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("intermediate", self.intermediate, MAX_WIDTH * 16),
        ] {
            if value == 0 || value > max {
                return Err((field, value, max));
            }
        }
        Ok(())
    }

    /// Checks that the switches make a model that can be built and saved in its family's layout,
    /// and that every size lies in a range no real model leaves, so that a crafted config is an
    /// error before anything is allocated from it.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        if let Err((field, value, max)) = self.check_sizes() {
            return err(format!("{field} = {value} is outside 1..={max}"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return err(format!("norm_eps = {} is outside (0, 1)", self.norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return err(format!(
                "rope_theta = {} must be a positive number",
                self.rope_theta
            ));
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return err(format!(
                "n_head ({}) must be a multiple of n_kv_head ({})",
                self.n_head, self.n_kv_head
            ));
        }
        if self.positions == Positions::Rope && !self.head_dim.is_multiple_of(2) {
            return err(format!(
                "RoPE needs an even head_dim, got {}",
                self.head_dim
            ));
        }
        if self.family == Family::Gpt2 && self.head_dim * self.n_head != self.n_embd {
            return err(format!(
                "GPT-2 needs n_embd ({}) divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        let gpt2_like = self.positions == Positions::Learned
            && self.norm == NormKind::LayerNorm
            && self.mlp == MlpKind::Gelu
            && self.n_kv_head == self.n_head
            && self.attn_bias
            && self.mlp_bias;
        let llama_like = self.positions == Positions::Rope
            && self.norm == NormKind::RmsNorm
            && self.mlp == MlpKind::SwiGlu;
        match self.family {
            Family::Gpt2 if !gpt2_like => err(
                "family gpt2 means learned positions, layernorm, gelu, n_kv_head = n_head and biases; \
                 use family llama for rope/rmsnorm/swiglu"
                    .into(),
            ),
            Family::Llama if !llama_like => err(
                "family llama means rope positions, rmsnorm and swiglu; use family gpt2 for the rest".into(),
            ),
            _ => Ok(()),
        }
    }

    /// Parameters, counting tied embeddings once.
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let qkv = (self.n_head + 2 * self.n_kv_head) * self.head_dim;
        let attn_out = self.n_head * self.head_dim;
        let norm = if self.norm == NormKind::LayerNorm {
            2 * c
        } else {
            c
        };
        let mlp_in = if self.mlp == MlpKind::SwiGlu { 2 } else { 1 } * self.intermediate;
        let mut block = c * qkv + attn_out * c + c * mlp_in + self.intermediate * c + 2 * norm;
        if self.attn_bias {
            block += qkv + c;
        }
        if self.mlp_bias {
            block += mlp_in + c;
        }
        let mut n = self.vocab_size * c + self.n_layer * block + norm;
        if self.positions == Positions::Learned {
            n += self.context * c;
        }
        if !self.tie_embeddings {
            n += self.vocab_size * c;
        }
        n
    }

    /// Training FLOPs per token for a forward + backward pass at sequence length `t`: 6 per weight of
    /// every matmul (the token embedding lookup is free, the output projection is not) plus the
    /// attention scores and mixing, as in the PaLM paper's appendix.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let mut matmul = self.num_params() - self.vocab_size * self.n_embd;
        if self.positions == Positions::Learned {
            matmul -= self.context * self.n_embd;
        }
        matmul += self.vocab_size * self.n_embd; // the output projection, tied or not
        let attn = 12 * self.n_layer * self.n_head * self.head_dim * t;
        (6 * matmul + attn) as f64
    }
}

/// Bounds of [`ModelConfig::validate`]: generous for real models (Llama 3.1's context is 131,072,
/// Gemma's vocabulary 256,000, Llama 405B's width 16,384 in 126 layers), small enough that a
/// crafted config.json or GGUF header cannot make the tables built from them (RoPE's cos/sin are
/// context × head_dim floats) exhaust memory.
pub const MAX_CONTEXT: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_HEAD_DIM: usize = 1024;

pub const PRESETS: &[&str] = &[
    "tiny",
    "tiny-llama",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "smollm2-135m",
];
