//! The model's parameters by internal name, their shapes, and their initialisation.
//!
//! Internal names are the same for both families (HF names only appear at the file boundary, see
//! `hf.rs`). Linear weights are stored `[out, in]` as in `torch.nn.Linear`. The attention input
//! projection is fused (`qkv`: query heads, then key heads, then value heads) and so is SwiGLU's
//! input (`fc`: gate rows, then up rows): one matmul each instead of three and two.

use super::config::{MlpKind, ModelConfig, NormKind, Positions};
use crate::error::{Error, Result};
use crate::ops::linear::BlockWeights;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// Every parameter of a model of this config, in a fixed order, with its shape.
pub fn param_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let c = cfg.n_embd;
    let qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim;
    let mlp_in = match cfg.mlp {
        MlpKind::Gelu => cfg.intermediate,
        MlpKind::SwiGlu => 2 * cfg.intermediate,
    };
    let mut v: Vec<(String, Vec<usize>)> = vec![("wte.weight".into(), vec![cfg.vocab_size, c])];
    if cfg.positions == Positions::Learned {
        v.push(("wpe.weight".into(), vec![cfg.context, c]));
    }
    let norm = |v: &mut Vec<(String, Vec<usize>)>, name: String| {
        v.push((format!("{name}.weight"), vec![c]));
        if cfg.norm == NormKind::LayerNorm {
            v.push((format!("{name}.bias"), vec![c]));
        }
    };
    for i in 0..cfg.n_layer {
        let p = format!("h.{i}");
        norm(&mut v, format!("{p}.ln_1"));
        v.push((format!("{p}.attn.qkv.weight"), vec![qkv, c]));
        if cfg.attn_bias {
            v.push((format!("{p}.attn.qkv.bias"), vec![qkv]));
        }
        v.push((
            format!("{p}.attn.proj.weight"),
            vec![c, cfg.n_head * cfg.head_dim],
        ));
        if cfg.attn_bias {
            v.push((format!("{p}.attn.proj.bias"), vec![c]));
        }
        norm(&mut v, format!("{p}.ln_2"));
        v.push((format!("{p}.mlp.fc.weight"), vec![mlp_in, c]));
        if cfg.mlp_bias {
            v.push((format!("{p}.mlp.fc.bias"), vec![mlp_in]));
        }
        v.push((format!("{p}.mlp.proj.weight"), vec![c, cfg.intermediate]));
        if cfg.mlp_bias {
            v.push((format!("{p}.mlp.proj.bias"), vec![c]));
        }
    }
    norm(&mut v, "ln_f".into());
    if !cfg.tie_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, c]));
    }
    v
}

/// Weight decay applies to matmul weights only: not to norms, biases or embeddings.
pub fn is_decayed(name: &str) -> bool {
    name.ends_with(".weight")
        && !name.contains("ln_")
        && name != "wte.weight"
        && name != "wpe.weight"
        && name != "lm_head.weight"
}

/// GPT-2 initialisation: N(0, 0.02) for matmuls and embeddings, residual output projections scaled
/// by 1/sqrt(2 * n_layer), zero biases, unit norm gains. Deterministic in `seed`.
pub fn init_weights(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let resid_std = 0.02 / ((2 * cfg.n_layer) as f64).sqrt();
    let mut out = BTreeMap::new();
    for (name, shape) in param_shapes(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.contains("ln_") && name.ends_with(".weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let std = if name.ends_with("attn.proj.weight") || name.ends_with("mlp.proj.weight") {
                resid_std
            } else {
                0.02
            };
            normal_vec(&mut rng, n, std)
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

fn normal_vec(rng: &mut impl Rng, n: usize, std: f64) -> Vec<f32> {
    // Box-Muller: two uniforms give two independent normals.
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        v.push((r * a.cos()) as f32);
        v.push((r * a.sin()) as f32);
    }
    v.truncate(n);
    v
}

/// Checks that `weights` holds exactly the tensors `cfg` needs, with the right shapes.
/// `origin` names the file(s) they came from, for the error message.
pub fn check_weights(
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
    origin: &str,
) -> Result<()> {
    check_weights_and_blocks(cfg, weights, &BlockWeights::new(), origin)
}

/// [`check_weights`] for a model some of whose weights are held in quantized `blocks` instead.
pub fn check_weights_and_blocks(
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
    blocks: &BlockWeights,
    origin: &str,
) -> Result<()> {
    for (name, shape) in param_shapes(cfg) {
        let dims = match (weights.get(&name), blocks.get(&name)) {
            (_, Some(q)) => vec![q.dims().0, q.dims().1],
            (Some(t), None) => t.dims().to_vec(),
            (None, None) => {
                return Err(Error::Mismatch(format!(
                    "{origin}: missing tensor for '{name}' that the config needs"
                )))
            }
        };
        if dims != shape {
            return Err(Error::Mismatch(format!(
                "{origin}: tensor '{name}' has shape {dims:?} but config.json implies {shape:?}"
            )));
        }
    }
    Ok(())
}

/// Weights holding NaN or infinity make every output NaN: refused by name instead of used.
pub fn check_finite(weights: &BTreeMap<String, Tensor>, origin: &str) -> Result<()> {
    for (name, t) in weights {
        check_finite_tensor(name, t, origin)?;
    }
    Ok(())
}

/// [`check_finite`] of one tensor.
pub fn check_finite_tensor(name: &str, t: &Tensor, origin: &str) -> Result<()> {
    if !all_finite(t)? {
        return Err(Error::Mismatch(format!(
            "{origin}: tensor '{name}' holds NaN or infinite values; the file is damaged, or was saved from a diverged run"
        )));
    }
    Ok(())
}

fn all_finite(t: &Tensor) -> Result<bool> {
    if t.dtype() == DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let start = layout.start_offset();
            let values = &cpu.as_slice::<f32>()?[start..start + t.elem_count()];
            return Ok(values.iter().all(|x| x.is_finite()));
        }
    }
    // 0 * x is 0 for every finite x and NaN otherwise: one reduction wherever the tensor lives.
    let t = t.to_dtype(DType::F32)?;
    Ok((t.zeros_like()? * &t)?.sum_all()?.to_scalar::<f32>()? == 0.0)
}
/// Trainable parameters: one `Var` per tensor, in `param_shapes` order.
pub struct Params {
    pub vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn from_tensors(weights: &BTreeMap<String, Tensor>) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (k, t) in weights {
            vars.insert(k.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        Ok(Params { vars })
    }

    /// The tensors behind the vars (shared storage: an optimizer step is seen by the model).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
