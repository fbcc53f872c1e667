//! Mean next-token cross-entropy with an ignore index, as `torch.nn.functional.cross_entropy`.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor, D};

/// Targets equal to this are left out of the mean (masked prompt tokens, padding).
pub const IGNORE_INDEX: i64 = -100;

/// Per-position negative log-likelihood. logits: (N, V), targets: (N,) i64 -> (N,) f32; ignored
/// positions give 0.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let mask = targets.ge(0i64)?.to_dtype(DType::F32)?;
    Ok((super::ops::token_nll(logits, targets)?, mask))
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
    let (nll, mask) = token_nll(&logits, &targets)?;
    mean_nll(&nll, &mask)
}

/// [`cross_entropy`] of the logits h @ w^T, for hidden states h: (N, C) and the output weight
/// w: (V, C), without the (N, V) logits leaving the fused op (`model::fused::lm_loss`).
pub fn projected_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
    let nll = super::fused::lm_loss::lm_nll(h, w, &targets)?;
    mean_nll(&nll, &targets.ge(0i64)?.to_dtype(DType::F32)?)
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
