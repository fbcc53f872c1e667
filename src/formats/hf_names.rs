//! Our internal tensor names and the Hugging Face ones (`GPT2LMHeadModel`, `LlamaForCausalLM`):
//! which HF tensors each internal weight is made of and how (as is, transposed from GPT-2's
//! `Conv1D` `[in, out]`, or Llama's q/k/v and gate/up joined by rows), both ways.

use crate::error::Result;
use crate::kernels::cpu::blockq::BlockWeight;
use crate::model::config::{Family, ModelConfig};
use crate::ops::linear::BlockWeights;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Internal name -> HF tensors it is made of, with their HF shapes, and how to combine them.
enum Source {
    Same(String),
    /// A Conv1D weight stored `[in, out]`.
    Transposed(String),
    /// Stacked along dim 0 (q, k, v or gate, up).
    Concat(Vec<String>),
}

/// Each internal weight: where it comes from in an HF checkpoint, and the shapes expected there.
type Sources = Vec<(String, Source, Vec<Vec<usize>>)>;

fn hf_sources(cfg: &ModelConfig) -> Sources {
    let mut v = match cfg.family {
        Family::Gpt2 => gpt2_sources(cfg),
        Family::Llama => llama_sources(cfg),
    };
    if !cfg.tie_embeddings {
        v.push((
            "lm_head.weight".into(),
            Source::Same("lm_head.weight".into()),
            vec![vec![cfg.vocab_size, cfg.n_embd]],
        ));
    }
    v
}

/// GPT-2's names (`transformer.h.N...`, Conv1D weights stored `[in, out]`).
fn gpt2_sources(cfg: &ModelConfig) -> Sources {
    use Source::*;
    let (c, i_) = (cfg.n_embd, cfg.intermediate);
    let mut v = Vec::new();
    let mut push = |ours: String, src: Source, shapes: Vec<Vec<usize>>| v.push((ours, src, shapes));
    push(
        "wte.weight".into(),
        Same("transformer.wte.weight".into()),
        vec![vec![cfg.vocab_size, c]],
    );
    push(
        "wpe.weight".into(),
        Same("transformer.wpe.weight".into()),
        vec![vec![cfg.context, c]],
    );
    for l in 0..cfg.n_layer {
        let (o, t) = (format!("h.{l}"), format!("transformer.h.{l}"));
        for ln in ["ln_1", "ln_2"] {
            for wb in ["weight", "bias"] {
                push(
                    format!("{o}.{ln}.{wb}"),
                    Same(format!("{t}.{ln}.{wb}")),
                    vec![vec![c]],
                );
            }
        }
        push(
            format!("{o}.attn.qkv.weight"),
            Transposed(format!("{t}.attn.c_attn.weight")),
            vec![vec![c, 3 * c]],
        );
        push(
            format!("{o}.attn.qkv.bias"),
            Same(format!("{t}.attn.c_attn.bias")),
            vec![vec![3 * c]],
        );
        push(
            format!("{o}.attn.proj.weight"),
            Transposed(format!("{t}.attn.c_proj.weight")),
            vec![vec![c, c]],
        );
        push(
            format!("{o}.attn.proj.bias"),
            Same(format!("{t}.attn.c_proj.bias")),
            vec![vec![c]],
        );
        push(
            format!("{o}.mlp.fc.weight"),
            Transposed(format!("{t}.mlp.c_fc.weight")),
            vec![vec![c, i_]],
        );
        push(
            format!("{o}.mlp.fc.bias"),
            Same(format!("{t}.mlp.c_fc.bias")),
            vec![vec![i_]],
        );
        push(
            format!("{o}.mlp.proj.weight"),
            Transposed(format!("{t}.mlp.c_proj.weight")),
            vec![vec![i_, c]],
        );
        push(
            format!("{o}.mlp.proj.bias"),
            Same(format!("{t}.mlp.c_proj.bias")),
            vec![vec![c]],
        );
    }
    push(
        "ln_f.weight".into(),
        Same("transformer.ln_f.weight".into()),
        vec![vec![c]],
    );
    push(
        "ln_f.bias".into(),
        Same("transformer.ln_f.bias".into()),
        vec![vec![c]],
    );
    v
}

/// Llama's names (`model.layers.N...`, q/k/v and gate/up as separate projections).
fn llama_sources(cfg: &ModelConfig) -> Sources {
    use Source::*;
    let c = cfg.n_embd;
    let (h, k, d, i_) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate);
    let mut v = Vec::new();
    let mut push = |ours: String, src: Source, shapes: Vec<Vec<usize>>| v.push((ours, src, shapes));
    push(
        "wte.weight".into(),
        Same("model.embed_tokens.weight".into()),
        vec![vec![cfg.vocab_size, c]],
    );
    for l in 0..cfg.n_layer {
        let (o, t) = (format!("h.{l}"), format!("model.layers.{l}"));
        push(
            format!("{o}.ln_1.weight"),
            Same(format!("{t}.input_layernorm.weight")),
            vec![vec![c]],
        );
        push(
            format!("{o}.ln_2.weight"),
            Same(format!("{t}.post_attention_layernorm.weight")),
            vec![vec![c]],
        );
        let qkv = ["q", "k", "v"].map(|p| format!("{t}.self_attn.{p}_proj"));
        let qkv_rows = [h * d, k * d, k * d];
        push(
            format!("{o}.attn.qkv.weight"),
            Concat(qkv.iter().map(|p| format!("{p}.weight")).collect()),
            qkv_rows.iter().map(|&r| vec![r, c]).collect(),
        );
        if cfg.attn_bias {
            push(
                format!("{o}.attn.qkv.bias"),
                Concat(qkv.iter().map(|p| format!("{p}.bias")).collect()),
                qkv_rows.iter().map(|&r| vec![r]).collect(),
            );
            push(
                format!("{o}.attn.proj.bias"),
                Same(format!("{t}.self_attn.o_proj.bias")),
                vec![vec![c]],
            );
        }
        push(
            format!("{o}.attn.proj.weight"),
            Same(format!("{t}.self_attn.o_proj.weight")),
            vec![vec![c, h * d]],
        );
        let gu = ["gate", "up"].map(|p| format!("{t}.mlp.{p}_proj"));
        push(
            format!("{o}.mlp.fc.weight"),
            Concat(gu.iter().map(|p| format!("{p}.weight")).collect()),
            vec![vec![i_, c], vec![i_, c]],
        );
        push(
            format!("{o}.mlp.proj.weight"),
            Same(format!("{t}.mlp.down_proj.weight")),
            vec![vec![c, i_]],
        );
        if cfg.mlp_bias {
            push(
                format!("{o}.mlp.fc.bias"),
                Concat(gu.iter().map(|p| format!("{p}.bias")).collect()),
                vec![vec![i_], vec![i_]],
            );
            push(
                format!("{o}.mlp.proj.bias"),
                Same(format!("{t}.mlp.down_proj.bias")),
                vec![vec![c]],
            );
        }
    }
    push(
        "ln_f.weight".into(),
        Same("model.norm.weight".into()),
        vec![vec![c]],
    );
    v
}

/// Converts HF-named tensors (looked up through `get(name, shape)`) into internal weights.
pub fn weights_from_hf(
    cfg: &ModelConfig,
    get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    weights_from_hf_except(cfg, &BlockWeights::new(), get)
}

/// [`weights_from_hf`] without the weights that `held` holds in blocks.
pub fn weights_from_hf_except(
    cfg: &ModelConfig,
    held: &BlockWeights,
    mut get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (ours, src, shapes) in hf_sources(cfg) {
        if held.contains_key(&ours) {
            continue;
        }
        let t = match src {
            Source::Same(n) => get(&n, &shapes[0])?,
            Source::Transposed(n) => get(&n, &shapes[0])?.t()?.contiguous()?,
            Source::Concat(ns) => {
                let parts = ns
                    .iter()
                    .zip(&shapes)
                    .map(|(n, s)| get(n, s))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)?
            }
        };
        out.insert(ours, t);
    }
    Ok(out)
}

/// The internal weights whose every HF part `get` gives as quantized blocks (of the shape asked
/// for; None for a tensor not stored so), the parts of a joined weight (query, key, value) joined
/// by rows where they share a format. A weight HF stores transposed (GPT-2's Conv1D) is asked for
/// in our (out, in) shape, as GGUF files store it.
pub fn blocks_from_hf(
    cfg: &ModelConfig,
    mut get: impl FnMut(&str, &[usize]) -> Result<Option<BlockWeight>>,
) -> Result<BlockWeights> {
    let mut out = BlockWeights::new();
    for (ours, src, shapes) in hf_sources(cfg) {
        let q = match src {
            Source::Same(n) => get(&n, &shapes[0])?,
            Source::Transposed(n) => get(&n, &[shapes[0][1], shapes[0][0]])?,
            Source::Concat(ns) => {
                let parts = ns
                    .iter()
                    .zip(&shapes)
                    .map(|(n, s)| get(n, s))
                    .collect::<Result<Option<Vec<_>>>>()?;
                // Parts in different formats (a file that mixes them) stay f32.
                match parts {
                    Some(p) if p.iter().all(|q| q.format() == p[0].format()) => {
                        Some(BlockWeight::concat_rows(&p)?)
                    }
                    _ => None,
                }
            }
        };
        if let Some(q) = q {
            out.insert(ours, std::sync::Arc::new(q));
        }
    }
    Ok(out)
}

/// Converts internal tensors (weights, or gradients of them) to HF names and layouts.
pub fn weights_to_hf(
    cfg: &ModelConfig,
    ours: &BTreeMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, src, shapes) in hf_sources(cfg) {
        let Some(t) = ours.get(&name) else { continue };
        match src {
            Source::Same(n) => out.push((n, t.contiguous()?)),
            Source::Transposed(n) => out.push((n, t.t()?.contiguous()?)),
            Source::Concat(ns) => {
                let mut row = 0;
                for (n, s) in ns.into_iter().zip(shapes) {
                    out.push((n, t.narrow(0, row, s[0])?.contiguous()?));
                    row += s[0];
                }
            }
        }
    }
    Ok(out)
}
