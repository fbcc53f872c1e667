//! Direct preference optimisation's objective, as TRL's `DPOTrainer` computes it: each side's
//! log-probability of its reply (summed over the reply's tokens), its log-ratio to the reference
//! model's, and the loss of the margin between the two sides (`sigmoid`: -log σ(β·margin); `ipo`:
//! (margin per token − 1/(2β))²), averaged over the pairs; and the metrics TRL logs under the same
//! names (`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
//! `logps/chosen`, `logps/rejected`).
//!
//! The loss depends on the model only through the 2·B sequence log-probabilities, so it and its
//! derivative with respect to each of them are computed on the host in f64 (stable for any
//! margin, and exact where the margin is zero, as it is at the first step); the model's gradients
//! are then those of Σ (∂loss/∂logp) · logp, one backward pass through the fused loss kernel.

use crate::config::{DpoLoss, DpoSection};
use crate::data::preference::PairExample;
use crate::data::sft::{pad_batch, EpochSampler, Example, PaddedBatch};
use crate::error::{Error, Result};
use crate::model::Transformer;
use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

/// The names of [`DpoStats`]' means, TRL's.
pub const METRICS: [&str; 6] = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

/// What a batch of pairs needs besides its tokens: the reference's log-probabilities of each row
/// and each row's reply length, chosen rows first, then the rejected ones in the same order.
#[derive(Debug, Clone)]
pub struct PairRows {
    pub reference: Vec<f64>,
    pub lengths: Vec<f64>,
}

/// Pairs as one padded batch: the B chosen rows, then the B rejected ones.
pub fn pair_batch(pairs: &[&PairExample], pad: u32) -> PaddedBatch {
    let rows: Vec<&Example> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    pad_batch(&rows, pad)
}

/// Each row's summed log-probability of its targets: (rows,) f32, with the graph to the weights.
pub fn sequence_logps(model: &Transformer, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(model.token_nll(x, y)?.sum(1)?.neg()?)
}

/// Sums over pairs of the six metrics, the loss, and the number of pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DpoStats {
    pub sums: [f64; 6],
    pub loss: f64,
    pub pairs: f64,
}

impl DpoStats {
    pub fn add(&mut self, o: &DpoStats) {
        for (a, b) in self.sums.iter_mut().zip(o.sums) {
            *a += b;
        }
        self.loss += o.loss;
        self.pairs += o.pairs;
    }

    /// As a flat vector (for an all-reduce) and back.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = self.sums.to_vec();
        v.extend([self.loss, self.pairs]);
        v
    }

    pub fn from_slice(v: &[f64]) -> DpoStats {
        let mut sums = [0.0; 6];
        sums.copy_from_slice(&v[..6]);
        DpoStats {
            sums,
            loss: v[6],
            pairs: v[7],
        }
    }

    /// The mean of each metric, under TRL's names.
    pub fn means(&self) -> Map<String, Value> {
        let n = self.pairs.max(1.0);
        METRICS
            .iter()
            .zip(self.sums)
            .map(|(k, s)| (k.to_string(), Value::from(s / n)))
            .collect()
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss / self.pairs.max(1.0)
    }
}

/// -log σ(z), stably.
fn softplus_neg(z: f64) -> f64 {
    (-z).max(0.0) + (-z.abs()).exp().ln_1p()
}

/// The loss of each pair and its derivatives with respect to the policy's chosen and rejected
/// log-probabilities, from the 2·B policy log-probabilities `logps` and the rows' reference and
/// lengths. Returns (stats over the pairs, ∂(mean loss)/∂logp for each row).
pub fn pair_losses(
    logps: &[f64],
    rows: &PairRows,
    cfg: &DpoSection,
) -> Result<(DpoStats, Vec<f64>)> {
    let b = logps.len() / 2;
    if logps.len() != 2 * b
        || rows.reference.len() != logps.len()
        || rows.lengths.len() != logps.len()
    {
        return Err(Error::Mismatch(
            "a preference batch needs a chosen and a rejected row per pair".into(),
        ));
    }
    let beta = cfg.beta;
    let mut stats = DpoStats {
        pairs: b as f64,
        ..Default::default()
    };
    let mut dlogp = vec![0.0; 2 * b];
    for i in 0..b {
        let (pc, pr) = (logps[i], logps[b + i]);
        let (cl, rl) = (pc - rows.reference[i], pr - rows.reference[b + i]);
        let (loss, dc, dr) = match cfg.loss {
            DpoLoss::Sigmoid => {
                let z = beta * (cl - rl);
                // d/dz -log σ(z) = -σ(-z).
                let g = -beta / (1.0 + z.exp());
                (softplus_neg(z), g, -g)
            }
            DpoLoss::Ipo => {
                let (lc, lr) = (rows.lengths[i].max(1.0), rows.lengths[b + i].max(1.0));
                let d = cl / lc - rl / lr - 1.0 / (2.0 * beta);
                (d * d, 2.0 * d / lc, -2.0 * d / lr)
            }
        };
        if !(loss.is_finite() && dc.is_finite() && dr.is_finite()) {
            return Err(Error::Training(format!(
                "the preference loss of a pair is not finite (log-probabilities {pc} / {pr}, reference {} / {})",
                rows.reference[i],
                rows.reference[b + i]
            )));
        }
        dlogp[i] = dc / b as f64;
        dlogp[b + i] = dr / b as f64;
        let (rc, rr) = (beta * cl, beta * rl);
        let metrics = [rc, rr, f64::from(u8::from(rc > rr)), rc - rr, pc, pr];
        for (s, m) in stats.sums.iter_mut().zip(metrics) {
            *s += m;
        }
        stats.loss += loss;
    }
    Ok((stats, dlogp))
}

/// The DPO loss of a batch (`pair_batch` rows): a tensor whose gradient is the loss's (its value
/// is not the loss), and the batch's stats (their `loss` is the loss, summed over pairs).
pub fn objective(
    model: &Transformer,
    x: &Tensor,
    y: &Tensor,
    rows: &PairRows,
    cfg: &DpoSection,
) -> Result<(Tensor, DpoStats)> {
    let logps = sequence_logps(model, x, y)?;
    let values: Vec<f64> = logps.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
    let (stats, dlogp) = pair_losses(&values, rows, cfg)?;
    let w: Vec<f32> = dlogp.iter().map(|&d| d as f32).collect();
    let w = Tensor::from_vec(w, logps.dims1()?, logps.device())?;
    Ok(((logps * w)?.sum_all()?, stats))
}

/// The summed log-probability of each side of each pair under `model` (no gradient), in batches
/// of `batch` pairs; the rows `keep` selects (the others are 0, for a rank's share). `done` hears
/// how many pairs are done after each batch (an error from it stops the pass).
pub fn reference_logps(
    model: &Transformer,
    pairs: &[PairExample],
    batch: usize,
    pad: u32,
    keep: impl Fn(usize) -> bool,
    done: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<[f64; 2]>> {
    let mut out = vec![[0.0; 2]; pairs.len()];
    let mine: Vec<usize> = (0..pairs.len()).filter(|&i| keep(i)).collect();
    let dev = model.device().clone();
    for chunk in mine.chunks(batch.max(1)) {
        let rows: Vec<&PairExample> = chunk.iter().map(|&i| &pairs[i]).collect();
        let (x, y) = batch_tensors(&pair_batch(&rows, pad), &dev)?;
        let logps = sequence_logps(model, &x, &y)?.detach().to_vec1::<f32>()?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i] = [logps[k] as f64, logps[chunk.len() + k] as f64];
        }
        done(chunk.len())?;
    }
    Ok(out)
}

/// A padded batch's inputs (B, T) u32 and targets (B, T) i64 on `dev`.
pub fn batch_tensors(b: &PaddedBatch, dev: &Device) -> Result<(Tensor, Tensor)> {
    Ok((
        Tensor::from_vec(b.inputs.clone(), (b.batch, b.len), dev)?,
        Tensor::from_vec(b.targets.clone(), (b.batch, b.len), dev)?,
    ))
}

/// The rows of `pairs` with their reference log-probabilities `refs`.
pub fn pair_rows(pairs: &[&PairExample], refs: &[[f64; 2]]) -> PairRows {
    let reference = refs
        .iter()
        .map(|r| r[0])
        .chain(refs.iter().map(|r| r[1]))
        .collect();
    let lengths = pairs
        .iter()
        .map(|p| p.chosen.trained() as f64)
        .chain(pairs.iter().map(|p| p.rejected.trained() as f64))
        .collect();
    PairRows { reference, lengths }
}

/// The loss and metrics of held-out pairs, in batches of `batch` pairs.
pub fn evaluate(
    model: &Transformer,
    pairs: &[PairExample],
    refs: &[[f64; 2]],
    batch: usize,
    pad: u32,
    cfg: &DpoSection,
) -> Result<DpoStats> {
    let mut total = DpoStats::default();
    let dev = model.device().clone();
    for (chunk, r) in pairs.chunks(batch.max(1)).zip(refs.chunks(batch.max(1))) {
        let rows: Vec<&PairExample> = chunk.iter().collect();
        let (x, y) = batch_tensors(&pair_batch(&rows, pad), &dev)?;
        let logps = sequence_logps(model, &x, &y)?.detach().to_vec1::<f32>()?;
        let logps: Vec<f64> = logps.into_iter().map(f64::from).collect();
        total.add(&pair_losses(&logps, &pair_rows(&rows, r), cfg)?.0);
    }
    Ok(total)
}

/// Training pairs, drawn in seeded epochs, with their reference log-probabilities.
pub struct PairLoader {
    pub pairs: Vec<PairExample>,
    /// Per pair: the reference's (chosen, rejected) log-probabilities (filled by `Source::attach_reference`).
    pub refs: Vec<[f64; 2]>,
    pub pad: u32,
    pub sampler: EpochSampler,
}

impl PairLoader {
    /// This rank's next batch and its rows' reference and lengths.
    pub fn next_batch(&mut self) -> (PaddedBatch, PairRows) {
        let idx = self.sampler.next_indices();
        let rows: Vec<&PairExample> = idx.iter().map(|&i| &self.pairs[i]).collect();
        let refs: Vec<[f64; 2]> = idx.iter().map(|&i| self.refs[i]).collect();
        let b = pair_batch(&rows, self.pad);
        (b, pair_rows(&rows, &refs))
    }
}
