//! Softmax over attention scores with the causal mask: row r of the scores (..., R, S) is new token
//! r mod t of t that follow S - t cached ones, and sees keys 0..=S - t + (r mod t).

use super::grad::with_grad;
use super::ones::{row_sums, scale_rows};
use crate::kernels::cpu;
use candle_core::{DType, Shape, Tensor, D};
use std::sync::Mutex;

type CResult<T> = candle_core::Result<T>;

/// Softmax over the last dim of attention scores (..., R, S) where row r is query time r mod t
/// of t new tokens following S - t cached ones; future keys get probability 0. The fused CPU
/// kernel in f32, elsewhere [`portable`].
pub fn causal_softmax(scores: &Tensor, t: usize) -> CResult<Tensor> {
    let s = scores.dim(D::Minus1)?;
    let rows = scores.dim(D::Minus2)?;
    if t == 0 || t > s || rows % t != 0 {
        candle_core::bail!("causal_softmax: {rows} rows, {s} keys and {t} new tokens do not fit")
    }
    if cpu::features::applies(scores) {
        return cpu::softmax::causal_softmax(scores, t);
    }
    portable(scores, t)
}

/// Softmax's backward over rows (N, C) of y = softmax(x): dx = y * (dy - rowsum(dy * y)), in f32.
fn softmax_backward(y: &Tensor, dy: &Tensor) -> CResult<Tensor> {
    let (y, dy) = (y.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
    let gy = (dy.contiguous()? * &y)?;
    &gy - scale_rows(&y, &row_sums(&gy)?)?
}

/// The causal mask (0 or -inf) for scores of this shape, kept for the next call with the same
/// shape, new-token count, dtype and device (a training run asks for the same one every layer and
/// step).
fn shaped_mask(
    shape: &Shape,
    t: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> CResult<Tensor> {
    type Key = (Vec<usize>, usize, DType);
    static LAST: Mutex<Option<(Key, Tensor)>> = Mutex::new(None);
    let key = (shape.dims().to_vec(), t, dtype);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, m)) = last.as_ref() {
        if *k == key && m.device().same_device(device) {
            return Ok(m.clone());
        }
    }
    // Free the old one before building the new one.
    *last = None;
    let (rows, s) = (
        shape.dims()[shape.rank() - 2],
        shape.dims()[shape.rank() - 1],
    );
    let mask = causal_mask(rows, s, t, device)?
        .to_dtype(dtype)?
        .broadcast_as(shape)?
        .contiguous()?;
    *last = Some((key, mask.clone()));
    Ok(mask)
}

/// Softmax over the last dim of attention scores (..., R, S) whose row r is new token r mod t of t
/// following S - t cached ones; future keys get probability 0. As [`reference`].
pub fn portable(scores: &Tensor, t: usize) -> CResult<Tensor> {
    let shape = scores.shape().clone();
    let s = scores.dim(D::Minus1)?;
    let x = scores.contiguous()?;
    // One new token sees every key: nothing to mask.
    let x = match t {
        1 => x,
        _ => (&x + shaped_mask(&shape, t, x.dtype(), x.device())?)?,
    };
    // In f32 whatever the compute dtype, as the backward (candle's CUDA kernel accumulates bf16 in
    // f32 too; its CPU version would not).
    let y =
        candle_nn::ops::softmax_last_dim(&x.detach().to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
    with_grad(&x, y, "causal-softmax", move |x, y, dy| {
        let n = y.elem_count() / s;
        softmax_backward(&y.reshape((n, s))?, &dy.reshape((n, s))?)?
            .to_dtype(x.dtype())?
            .reshape(x.shape())
    })
}

/// The composed candle version, for tests: an additive mask and candle's softmax.
pub fn reference(scores: &Tensor, t: usize) -> CResult<Tensor> {
    let (s, rows) = (scores.dim(D::Minus1)?, scores.dim(D::Minus2)?);
    let mask = causal_mask(rows, s, t, scores.device())?.to_dtype(scores.dtype())?;
    candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)
}

/// The additive causal mask (rows, s): 0 where row r (new token r mod t of t, after s - t cached
/// ones) may look, -inf on the keys after it.
pub(crate) fn causal_mask(
    rows: usize,
    s: usize,
    t: usize,
    device: &candle_core::Device,
) -> CResult<Tensor> {
    let past = s - t;
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            (0..s).map(move |j| {
                if j > past + r % t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, s), device)
}
