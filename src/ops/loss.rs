//! The training objective: per-token negative log-likelihood of (N, V) logits and the mean
//! next-token cross-entropy with an ignore index, as `torch.nn.functional.cross_entropy`; and the
//! same through the output projection without the logits leaving one fused op.

use super::grad::with_grad;
use super::ones::scale_rows;
use crate::error::{Error, Result};
use crate::kernels::cpu;
use candle_core::{DType, Tensor, D};

type CResult<T> = candle_core::Result<T>;

/// Targets equal to this are left out of the mean (masked prompt tokens, padding).
pub const IGNORE_INDEX: i64 = -100;

/// Per-row negative log-likelihood of `targets` (i64, negative = ignored, 0 there) under `logits`
/// (N, V). The fused CPU kernel in f32, elsewhere [`portable_token_nll`].
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let t = cpu::nll::checked_targets(targets, logits.dim(1)?)?;
    if cpu::features::applies(logits) {
        return cpu::nll::token_nll(logits, t);
    }
    portable_token_nll(logits, targets)
}

/// Per-row negative log-likelihood of `targets` (N,) (i64, negative = ignored, 0 there) under
/// logits (N, V). As [`reference_token_nll`].
pub fn portable_token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let x = logits.contiguous()?;
    let keep = targets.ge(0i64)?.to_dtype(x.dtype())?.unsqueeze(1)?;
    let safe = targets.maximum(0i64)?.to_dtype(DType::U32)?.unsqueeze(1)?;
    let xd = x.detach();
    let p = candle_nn::ops::softmax_last_dim(&xd)?;
    // The row's largest logit and largest probability are at the same place: one reduction.
    let top = xd.argmax_keepdim(1)?;
    let lse = (xd.gather(&top, 1)? - p.gather(&top, 1)?.log()?)?;
    let nll = ((lse - xd.gather(&safe, 1)?)? * &keep)?.squeeze(1)?;
    with_grad(&x, nll, "token-nll", move |x, _, g| {
        // (softmax - onehot(target)) * g, zero on ignored rows.
        let g = (g.unsqueeze(1)? * &keep)?;
        let p = candle_nn::ops::softmax_last_dim(x)?;
        scale_rows(&p, &g)?.scatter_add(&safe, &g.neg()?, 1)
    })
}

/// The composed candle version of [`token_nll`], for tests: log-softmax and a gather.
pub fn reference_token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let keep = targets.ge(0i64)?;
    let safe = keep
        .where_cond(targets, &targets.zeros_like()?)?
        .to_dtype(DType::U32)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    picked.neg()? * keep.to_dtype(logits.dtype())?
}

/// 1.0 where a target counts, 0.0 where it is ignored: (N,) f32.
pub fn kept(targets: &Tensor) -> Result<Tensor> {
    Ok(targets.ge(0i64)?.to_dtype(DType::F32)?)
}

/// Mean cross-entropy over the positions whose target is not [`IGNORE_INDEX`].
/// logits: (B, T, V) or (N, V); targets: (B, T) or (N,) as i64.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    // Already (N, V): no reshape node (its backward would add a zero-filled copy of the gradient).
    let logits = match logits.rank() {
        2 => logits.clone(),
        _ => logits.reshape(((), v))?,
    };
    let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
    mean_nll(&token_nll(&logits, &targets)?, &kept(&targets)?)
}

/// Per-row negative log-likelihood of `targets` (N,) (i64, negative = ignored) under the logits
/// h @ w^T, for h: (N, C) and w: (V, C). Fused on the CPU in f32 (`kernels::cpu::lm_loss`);
/// elsewhere the projection, a cast to f32 and [`token_nll`].
pub fn projected_nll(h: &Tensor, w: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    if !(cpu::features::applies(h) && cpu::features::applies(w)) {
        let logits = super::linear::linear(h, w, None)?.to_dtype(DType::F32)?;
        return token_nll(&logits, targets);
    }
    let t = cpu::nll::checked_targets(targets, w.dim(0)?)?;
    cpu::lm_loss::lm_nll(h, w, t)
}

/// [`cross_entropy`] of the logits h @ w^T, for hidden states h: (N, C) and the output weight
/// w: (V, C), without the (N, V) logits leaving the fused op.
pub fn projected_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
    let nll = projected_nll(h, w, &targets)?;
    mean_nll(&nll, &kept(&targets)?)
}

/// The sum of `nll` over the positions `mask` keeps, divided by their number.
fn mean_nll(nll: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let count = mask.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        return Err(Error::Mismatch(
            "every target is ignored: nothing to compute a loss on".into(),
        ));
    }
    Ok((nll.sum_all()? / count as f64)?)
}
