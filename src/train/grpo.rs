//! Group relative policy optimisation's objective (Shao et al., 2024), as TRL's `GRPOTrainer`
//! computes it: each sampled reply's advantage is its reward less its group's mean, over the
//! group's standard deviation (+1e-4); each reply token's loss is PPO's clipped surrogate
//! −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ the ratio of its probability under the policy to that under the
//! policy that sampled it, plus β times the KL estimate exp(r−p) − (r−p) − 1 to the reference
//! (p, r the two log-probabilities); the step's loss is the mean over all its reply tokens (TRL's
//! token-level `dapo` normalisation, its default).
//!
//! As for DPO, the loss depends on the model only through the reply tokens' log-probabilities, so
//! it and its derivative by each are computed on the host in f64 and the model's gradients are
//! those of Σ (∂loss/∂logp) · logp, one backward pass through the fused loss kernel.

use crate::config::RlSection;
use crate::error::{Error, Result};
use crate::model::Transformer;
use candle_core::Tensor;
use serde_json::{Map, Value};

/// The advantage of each reply (`rewards` in groups of `group`, group after group).
pub fn advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group.max(1)) {
        let (mean, std) = mean_std(g);
        out.extend(g.iter().map(|r| (r - mean) / (std + 1e-4)));
    }
    out
}

/// The mean and the unbiased standard deviation (torch's `std`; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// What the loss needs of a batch besides the policy's log-probabilities; the per-position
/// vectors are laid out as the batch (row after row, `len` positions each).
#[derive(Debug, Clone)]
pub struct GrpoRows {
    /// Per row: its reply's advantage.
    pub advantages: Vec<f64>,
    /// Per position: the sampling policy's log-probability of the target. None: the policy being
    /// trained is that policy (the batch's first step), so every ratio is 1.
    pub old: Option<Vec<f64>>,
    /// Per position: the reference's log-probability of the target (for the KL penalty).
    pub reference: Option<Vec<f64>>,
    /// The reply tokens of the whole step (all its micro-batches): the loss is their mean.
    pub step_tokens: f64,
}

/// Sums over a step's reply tokens: the loss (already divided by the step's tokens), the KL
/// estimate, the tokens whose ratio was clipped, and the tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GrpoStats {
    pub loss: f64,
    pub kl: f64,
    pub clipped: f64,
    pub tokens: f64,
}

impl GrpoStats {
    pub fn add(&mut self, o: &GrpoStats) {
        self.loss += o.loss;
        self.kl += o.kl;
        self.clipped += o.clipped;
        self.tokens += o.tokens;
    }

    pub fn to_vec(self) -> Vec<f64> {
        vec![self.loss, self.kl, self.clipped, self.tokens]
    }

    pub fn from_slice(v: &[f64]) -> GrpoStats {
        GrpoStats {
            loss: v[0],
            kl: v[1],
            clipped: v[2],
            tokens: v[3],
        }
    }

    /// TRL's names: `kl` (only with a KL penalty) and `clip_ratio/region_mean`.
    pub fn means(&self, with_kl: bool) -> Map<String, Value> {
        let n = self.tokens.max(1.0);
        let mut m = Map::new();
        if with_kl {
            m.insert("kl".into(), Value::from(self.kl / n));
        }
        m.insert(
            "clip_ratio/region_mean".into(),
            Value::from(self.clipped / n),
        );
        m
    }
}

/// The loss of a batch's reply tokens and its derivative by each policy log-probability, from
/// the policy's log-probabilities `logps` (per position), which positions are reply tokens
/// (`mask`) and `rows`. Returns (their stats, ∂loss/∂logp per position, 0 off the replies).
pub fn token_losses(
    logps: &[f64],
    mask: &[bool],
    rows: &GrpoRows,
    cfg: &RlSection,
) -> Result<(GrpoStats, Vec<f64>)> {
    let b = rows.advantages.len();
    let same = |v: &Option<Vec<f64>>| v.as_ref().is_none_or(|v| v.len() == logps.len());
    if b == 0 || logps.len() != mask.len() || !logps.len().is_multiple_of(b) {
        return Err(Error::Mismatch(
            "a GRPO batch needs an advantage per row and a mask per position".into(),
        ));
    }
    if !same(&rows.old) || !same(&rows.reference) {
        return Err(Error::Mismatch(
            "a GRPO batch's old and reference log-probabilities need one per position".into(),
        ));
    }
    let len = logps.len() / b;
    let n = rows.step_tokens.max(1.0);
    let (lo, hi) = (1.0 - cfg.clip, 1.0 + cfg.clip);
    let mut stats = GrpoStats::default();
    let mut grad = vec![0.0; logps.len()];
    for (i, ((&p, &m), g)) in logps.iter().zip(mask).zip(&mut grad).enumerate() {
        if !m {
            continue;
        }
        let a = rows.advantages[i / len];
        let ratio = match &rows.old {
            Some(old) => (p - old[i]).exp(),
            None => 1.0,
        };
        let clipped = ratio.clamp(lo, hi);
        // −min(ρA, cA): the unclipped term's gradient −Aρ where it is the smaller (or equal, the
        // ratio inside the range); none where the clipped constant is.
        let (mut loss, mut d) = match ratio * a <= clipped * a {
            true => (-ratio * a, -a * ratio),
            false => (-clipped * a, 0.0),
        };
        if (ratio < lo && a < 0.0) || (ratio > hi && a > 0.0) {
            stats.clipped += 1.0;
        }
        if let Some(r) = &rows.reference {
            let diff = r[i] - p;
            let kl = diff.exp() - diff - 1.0;
            loss += cfg.kl * kl;
            d += cfg.kl * (1.0 - diff.exp());
            stats.kl += kl;
        }
        if !(loss.is_finite() && d.is_finite()) {
            return Err(Error::Training(format!(
                "the GRPO loss of a reply token is not finite (log-probability {p}, advantage {a})"
            )));
        }
        stats.loss += loss / n;
        stats.tokens += 1.0;
        *g = d / n;
    }
    Ok((stats, grad))
}

/// The GRPO loss of a padded batch of prompt + reply rows (targets only on the replies): a
/// tensor whose gradient is the loss's (its value is not the loss), the batch's stats, and the
/// policy's log-probability of each position's target (0 off the replies).
pub fn objective(
    model: &Transformer,
    x: &Tensor,
    y: &Tensor,
    rows: &GrpoRows,
    cfg: &RlSection,
) -> Result<(Tensor, GrpoStats, Vec<f64>)> {
    let nll = model.token_nll(x, y)?;
    let mask: Vec<bool> = y
        .flatten_all()?
        .to_vec1::<i64>()?
        .iter()
        .map(|&t| t >= 0)
        .collect();
    let logps: Vec<f64> = nll
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|&v| -f64::from(v))
        .collect();
    let (stats, grad) = token_losses(&logps, &mask, rows, cfg)?;
    // logp = −nll, so Σ g · logp = Σ (−g) · nll.
    let w: Vec<f32> = grad.iter().map(|&g| -g as f32).collect();
    let w = Tensor::from_vec(w, nll.dims2()?, nll.device())?;
    Ok(((nll * w)?.sum_all()?, stats, logps))
}
