//! The causal mask and the softmax of attention scores in one pass on the CPU, and softmax's
//! backward row by row.

use super::exp::exp_shifted_sum;
use super::parallel::for_each_chunk_mut;
use super::storage::{f32_data, CResult, ZipBackward};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

const SOFTMAX_BACKWARD: ZipBackward = ZipBackward {
    name: "softmax-backward",
    f: softmax_backward,
};

/// Row r of the scores sees keys 0..=past + (r mod t), with past = S - t.
struct CausalSoftmax {
    t: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    /// scores (..., R, S) -> probabilities, zero on future keys.
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let s = layout.shape().dims()[layout.shape().rank() - 1];
        let x = f32_data(storage, layout, self.name())?;
        let (t, past) = (self.t, s - self.t);
        let mut out = vec![0f32; x.len()];
        for_each_chunk_mut(&mut out, s, |r, o| {
            let row = &x[r * s..(r + 1) * s];
            let visible = past + (r % t) + 1;
            let row = &row[..visible];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            o[..visible].copy_from_slice(row);
            let inv = 1.0 / exp_shifted_sum(&mut o[..visible], max);
            o[..visible].iter_mut().for_each(|p| *p *= inv);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            res.apply_op2(&grad_res.contiguous()?, SOFTMAX_BACKWARD)?,
        ))
    }
}

/// dx = y * (dy - sum_j(dy_j * y_j)) for y = softmax(x), row by row (rows of `s`).
fn softmax_backward(y: &[f32], dy: &[f32], s: usize, out: &mut [f32]) {
    for_each_chunk_mut(out, s, |r, o| {
        let (y, dy) = (&y[r * s..(r + 1) * s], &dy[r * s..(r + 1) * s]);
        let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
        for ((oj, &yj), &dyj) in o.iter_mut().zip(y).zip(dy) {
            *oj = yj * (dyj - dot);
        }
    });
}

/// Softmax of f32 CPU scores (..., R, S) whose row r is new token r mod t of t after S - t cached
/// ones; future keys get 0. The caller checks the shapes (`ops::softmax`).
pub fn causal_softmax(scores: &Tensor, t: usize) -> CResult<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { t })
}
