//! LoRA adapters (Hu et al. 2021) in the layout of Hugging Face PEFT: a frozen base linear `W`
//! gains `scale * B @ A` with `A: [r, in]`, `B: [out, r]`, `scale = alpha / r`; `B` starts at zero so
//! training starts from the base model. Saved as `adapter_config.json` + `adapter_model.safetensors`
//! with PEFT's tensor names (`formats::peft`), so `PeftModel.from_pretrained` loads what `chatforge sft --lora-rank`
//! writes (and chatforge loads PEFT's adapters).
//!
//! The fused projections are adapted by parts: Llama's `q_proj`/`k_proj`/`v_proj` are row ranges of
//! the fused `qkv` weight and `gate_proj`/`up_proj` of the fused `fc` weight (see `params.rs`).

use super::config::{Family, MlpKind, ModelConfig};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// What to adapt and how strongly.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names (`q_proj`, `c_attn`, ...) or `all-linear`.
    pub targets: Vec<String>,
    pub dropout: f64,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapted weight: the PEFT module it is saved as, and the rows of an internal linear it adds to.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// e.g. `base_model.model.model.layers.0.self_attn.q_proj`
    pub module: String,
    /// Internal linear name, e.g. `h.0.attn.qkv` (its weight is `{linear}.weight`).
    pub linear: String,
    pub offset: usize,
    pub out: usize,
    pub inp: usize,
}

impl Slot {
    pub fn a_name(&self) -> String {
        format!("{}.lora_A.weight", self.module)
    }
    pub fn b_name(&self) -> String {
        format!("{}.lora_B.weight", self.module)
    }
}

/// The linear modules a model family has, in PEFT's names.
pub fn module_names(cfg: &ModelConfig) -> &'static [&'static str] {
    match cfg.family {
        Family::Gpt2 => &["c_attn", "c_proj", "c_fc"],
        Family::Llama => &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    }
}

/// Resolves `targets` (with `all-linear`) to module names of this family, or says which exist.
pub fn resolve_targets(cfg: &ModelConfig, targets: &[String]) -> Result<Vec<String>> {
    let known = module_names(cfg);
    if targets.is_empty() || targets.iter().any(|t| t == "all-linear") {
        return Ok(known.iter().map(|s| s.to_string()).collect());
    }
    let mut out = Vec::new();
    for t in targets {
        if !known.contains(&t.as_str()) {
            return Err(Error::Config(format!(
                "LoRA target '{t}' is not a linear layer of a {} model; choose from {} or all-linear",
                format!("{:?}", cfg.family).to_lowercase(),
                known.join(", ")
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// Every adapted weight of a model for these targets, layer by layer.
pub fn slots(cfg: &ModelConfig, targets: &[String]) -> Result<Vec<Slot>> {
    let targets = resolve_targets(cfg, targets)?;
    let c = cfg.n_embd;
    let (hd, kd) = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim);
    let i_dim = cfg.intermediate;
    let mut v = Vec::new();
    for l in 0..cfg.n_layer {
        let slot = |module: String, linear: &str, offset, out, inp| Slot {
            module,
            linear: format!("h.{l}.{linear}"),
            offset,
            out,
            inp,
        };
        for t in &targets {
            match cfg.family {
                Family::Gpt2 => {
                    let m = |sub: &str| format!("base_model.model.transformer.h.{l}.{sub}.{t}");
                    match t.as_str() {
                        "c_attn" => v.push(slot(m("attn"), "attn.qkv", 0, hd + 2 * kd, c)),
                        "c_proj" => {
                            v.push(slot(m("attn"), "attn.proj", 0, c, hd));
                            v.push(slot(m("mlp"), "mlp.proj", 0, c, i_dim));
                        }
                        _ => v.push(slot(m("mlp"), "mlp.fc", 0, i_dim, c)),
                    }
                }
                Family::Llama => {
                    let m = |sub: &str| format!("base_model.model.model.layers.{l}.{sub}.{t}");
                    let gated = cfg.mlp == MlpKind::SwiGlu;
                    v.push(match t.as_str() {
                        "q_proj" => slot(m("self_attn"), "attn.qkv", 0, hd, c),
                        "k_proj" => slot(m("self_attn"), "attn.qkv", hd, kd, c),
                        "v_proj" => slot(m("self_attn"), "attn.qkv", hd + kd, kd, c),
                        "o_proj" => slot(m("self_attn"), "attn.proj", 0, c, hd),
                        "gate_proj" if gated => slot(m("mlp"), "mlp.fc", 0, i_dim, c),
                        "up_proj" if gated => slot(m("mlp"), "mlp.fc", i_dim, i_dim, c),
                        _ => slot(m("mlp"), "mlp.proj", 0, c, i_dim),
                    });
                }
            }
        }
    }
    Ok(v)
}

/// Trainable parameters of rank `r` over these slots: r * (in + out) each.
pub fn param_count(slots: &[Slot], rank: usize) -> usize {
    slots.iter().map(|s| rank * (s.inp + s.out)).sum()
}

/// PEFT's initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5)), B = 0.
/// Deterministic in `seed`.
pub fn init(
    slots: &[Slot],
    rank: usize,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x4c6f5241);
    let mut w = BTreeMap::new();
    for s in slots {
        let bound = 1.0 / (s.inp as f32).sqrt();
        let a: Vec<f32> = (0..rank * s.inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        w.insert(s.a_name(), Tensor::from_vec(a, (rank, s.inp), device)?);
        w.insert(
            s.b_name(),
            Tensor::zeros((s.out, rank), DType::F32, device)?,
        );
    }
    Ok(w)
}

/// The adapter path of one internal linear: its parts' outputs, placed at their rows, added to the
/// base output.
pub struct Adapter {
    /// (row offset, A [r, in], B [len, r]) sorted by offset.
    parts: Vec<(usize, Tensor, Tensor)>,
    out: usize,
    scale: f64,
    dropout: f32,
    pub(super) training: bool,
}

impl Adapter {
    /// y + scale * dropout(x) A^T B^T at each part's rows. x: (N, in), y: (N, out).
    pub fn apply(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let x = if self.training && self.dropout > 0.0 {
            candle_nn::ops::dropout(x, self.dropout)?
        } else {
            x.clone()
        };
        let n = x.dim(0)?;
        let mut pieces = Vec::new();
        let mut at = 0;
        for (offset, a, b) in &self.parts {
            if *offset > at {
                pieces.push(Tensor::zeros((n, offset - at), y.dtype(), y.device())?);
            }
            let d = (x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
            at = offset + b.dim(0)?;
            pieces.push(d);
        }
        if at < self.out {
            pieces.push(Tensor::zeros((n, self.out - at), y.dtype(), y.device())?);
        }
        let delta = if pieces.len() == 1 {
            pieces.pop().expect("one piece")
        } else {
            Tensor::cat(&pieces, 1)?
        };
        Ok((y + delta)?)
    }
}

/// Adapters by internal linear name, over adapter weights (PEFT names; Vars while training).
pub fn adapters(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    weights: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Adapter>> {
    let mut out: BTreeMap<String, Adapter> = BTreeMap::new();
    for s in slots(cfg, &lora.targets)? {
        let (a, b) = slot_weights(&s, weights)?;
        let total = linear_rows(cfg, &s.linear);
        let ad = out.entry(s.linear.clone()).or_insert_with(|| Adapter {
            parts: vec![],
            out: total,
            scale: lora.scale(),
            dropout: lora.dropout as f32,
            training: false,
        });
        ad.parts.push((s.offset, a, b));
        ad.parts.sort_by_key(|p| p.0);
    }
    Ok(out)
}

fn slot_weights(s: &Slot, w: &BTreeMap<String, Tensor>) -> Result<(Tensor, Tensor)> {
    let get = |name: String| {
        w.get(&name)
            .cloned()
            .ok_or_else(|| Error::Mismatch(format!("the adapter has no tensor '{name}'")))
    };
    let (a, b) = (get(s.a_name())?, get(s.b_name())?);
    let (ra, ia) = a.dims2()?;
    let (ob, rb) = b.dims2()?;
    if ia != s.inp || ob != s.out || ra != rb {
        return Err(Error::Mismatch(format!(
            "adapter tensors of {}: A is {:?} and B is {:?}, but the model needs A [r, {}] and B [{}, r]",
            s.module,
            a.dims(),
            b.dims(),
            s.inp,
            s.out
        )));
    }
    Ok((a, b))
}

fn linear_rows(cfg: &ModelConfig, linear: &str) -> usize {
    let mlp_in = match cfg.mlp {
        MlpKind::Gelu => cfg.intermediate,
        MlpKind::SwiGlu => 2 * cfg.intermediate,
    };
    if linear.ends_with("attn.qkv") {
        (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    } else if linear.ends_with("mlp.fc") {
        mlp_in
    } else {
        cfg.n_embd
    }
}

/// Base weights with the adapter folded in: W[rows] += scale * B @ A.
pub fn merge(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    base: &BTreeMap<String, Tensor>,
    adapter: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut merged = base.clone();
    for s in slots(cfg, &lora.targets)? {
        let (a, b) = slot_weights(&s, adapter)?;
        let name = format!("{}.weight", s.linear);
        let w = merged
            .get(&name)
            .ok_or_else(|| Error::Mismatch(format!("the base model has no weight '{name}'")))?;
        let delta = (b.matmul(&a)? * lora.scale())?.to_dtype(w.dtype())?;
        let rows = w.dim(0)?;
        let mut pieces = vec![];
        if s.offset > 0 {
            pieces.push(w.narrow(0, 0, s.offset)?);
        }
        pieces.push((w.narrow(0, s.offset, s.out)? + delta)?);
        if s.offset + s.out < rows {
            pieces.push(w.narrow(0, s.offset + s.out, rows - s.offset - s.out)?);
        }
        let new = Tensor::cat(&pieces, 0)?;
        merged.insert(name, new);
    }
    Ok(merged)
}
