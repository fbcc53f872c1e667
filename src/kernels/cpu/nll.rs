//! The per-token negative log-likelihood of (N, V) logits on the CPU: log-softmax and the gather
//! of the target in one pass, and its gradient `softmax - onehot` computed directly in the backward
//! pass (no probabilities tensor).

use super::exp::{exp_shifted_sum, exp_shifted_total};
use super::parallel::{for_each_chunk_mut, parallel_map};
use super::storage::{f32_data, with_f32, CResult};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// log(sum(exp(row))) computed stably.
pub fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_shifted_total(row, max);
    max + sum.ln()
}

struct TokenNll {
    targets: Arc<Vec<i64>>,
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    /// logits (N, V) -> nll (N,), 0 where the target is negative (ignored).
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let x = f32_data(storage, layout, self.name())?;
        let out = parallel_map(n, |i| row_nll(&x[i * v..(i + 1) * v], self.targets[i]).0);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let g = grad_res.to_vec1::<f32>()?;
        let grad = with_f32(arg, self.name(), |x| {
            let mut out = x.to_vec();
            for_each_chunk_mut(&mut out, v, |i, o| {
                let lse = logsumexp(o);
                nll_grad_row(o, lse, self.targets[i], g[i])
            });
            out
        })?;
        Ok(Some(Tensor::from_vec(grad, (n, v), arg.device())?))
    }
}

/// (nll, log-sum-exp) of one row of logits for target `t`; the nll is 0 where `t` is negative
/// (ignored).
pub(crate) fn row_nll(row: &[f32], t: i64) -> (f32, f32) {
    let lse = logsumexp(row);
    (if t < 0 { 0.0 } else { lse - row[t as usize] }, lse)
}

/// One row of logits (log-sum-exp `lse`) turned in place into d nll / d logits =
/// (softmax - onehot(t)) * g; zeros where the target is ignored or no gradient arrives.
pub(crate) fn nll_grad_row(row: &mut [f32], lse: f32, t: i64, g: f32) {
    if t < 0 || g == 0.0 {
        row.fill(0.0);
        return;
    }
    exp_shifted_sum(row, lse);
    row.iter_mut().for_each(|p| *p *= g);
    row[t as usize] -= g;
}

/// The targets as i64 ids, an error naming the first outside a vocabulary of `v`.
pub(crate) fn checked_targets(targets: &Tensor, v: usize) -> CResult<Vec<i64>> {
    let t: Vec<i64> = targets.to_vec1()?;
    if let Some(bad) = t.iter().find(|&&x| x >= v as i64) {
        candle_core::bail!("target id {bad} is outside the vocabulary of {v}")
    }
    Ok(t)
}

/// Per-row nll of `targets` (checked ids, negative = ignored) under f32 CPU logits (N, V).
pub fn token_nll(logits: &Tensor, targets: Vec<i64>) -> CResult<Tensor> {
    logits.contiguous()?.apply_op1(TokenNll {
        targets: Arc::new(targets),
    })
}
