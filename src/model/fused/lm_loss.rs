//! The output projection and the per-token negative log-likelihood as one op: h (N, C) and the
//! output weight w (V, C) give nll (N,) for the targets (negative = ignored, nll 0).
//!
//! The (N, V) logits, the largest activation of a training step, live inside the op: the forward
//! pass keeps them with each row's log-sum-exp, and the backward pass turns them in place into the
//! gradient (softmax - onehot) * dnll, then runs dh = G w and dw = G^T h. Composed (a linear layer,
//! then the loss), the same step allocated the logits' gradient twice, once as the loss's output and
//! once as candle's zero-filled accumulator, and added one into the other.

use super::gemm::{matmul_new, View};
use super::{applies, f32_data, for_each_chunk_mut, parallel_map, CResult};
use crate::model::ops::logsumexp;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// What the forward pass leaves for the backward pass: the logits and each row's log-sum-exp.
struct Kept {
    logits: Vec<f32>,
    lse: Vec<f32>,
}

struct LmNll {
    targets: Arc<Vec<i64>>,
    kept: Mutex<Option<Kept>>,
    keep: bool,
}

impl CustomOp2 for LmNll {
    fn name(&self) -> &'static str {
        "lm-nll"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, c) = hl.shape().dims2()?;
        let (v, c2) = wl.shape().dims2()?;
        if c != c2 || n != self.targets.len() {
            candle_core::bail!(
                "lm-nll: {n} rows of width {c}, a ({v}, {c2}) output weight and {} targets",
                self.targets.len()
            )
        }
        let (h, w) = (
            f32_data(hs, hl, self.name())?,
            f32_data(ws, wl, self.name())?,
        );
        let logits = matmul_new(n, v, c, View::rows(h, c), View::rows(w, c).t(), 1.0);
        let (nll, lse): (Vec<f32>, Vec<f32>) = parallel_map(n, |i| {
            let (row, t) = (&logits[i * v..(i + 1) * v], self.targets[i]);
            let lse = logsumexp(row);
            (if t < 0 { 0.0 } else { lse - row[t as usize] }, lse)
        })
        .into_iter()
        .unzip();
        if self.keep {
            *self.kept.lock().expect("not poisoned") = Some(Kept { logits, lse });
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _nll: &Tensor,
        dnll: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let Some(Kept { mut logits, lse }) = self.kept.lock().expect("not poisoned").take() else {
            candle_core::bail!("lm-nll: backward without a forward that kept its logits")
        };
        let (v, c) = w.dims2()?;
        let n = lse.len();
        let g = dnll.to_vec1::<f32>()?;
        for_each_chunk_mut(&mut logits, v, |i, row| match self.targets[i] {
            t if t < 0 || g[i] == 0.0 => row.fill(0.0),
            t => {
                super::exp::exp_shifted_sum(row, lse[i]);
                row.iter_mut().for_each(|p| *p *= g[i]);
                row[t as usize] -= g[i];
            }
        });
        let grad = View::rows(&logits, v);
        let dev = h.device();
        let dh = if h.track_op() {
            let dh = super::with_f32(w, self.name(), |wd| {
                matmul_new(n, c, v, grad, View::rows(wd, c), 1.0)
            })?;
            Some(Tensor::from_vec(dh, (n, c), dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let dw = super::with_f32(h, self.name(), |hd| {
                matmul_new(v, c, n, grad.t(), View::rows(hd, c), 1.0)
            })?;
            Some(Tensor::from_vec(dw, (v, c), dev)?)
        } else {
            None
        };
        Ok((dh, dw))
    }
}

/// Per-row negative log-likelihood of `targets` (N,) (i64, negative = ignored) under the logits
/// h @ w^T, for h: (N, C) and w: (V, C). Fused on the CPU in f32; elsewhere the projection, a cast
/// to f32 and [`crate::model::ops::token_nll`].
pub fn lm_nll(h: &Tensor, w: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    if !(applies(h) && applies(w)) {
        let logits = super::linear::linear(h, w, None)?.to_dtype(DType::F32)?;
        return crate::model::ops::token_nll(&logits, targets);
    }
    let t: Vec<i64> = targets.to_vec1()?;
    let v = w.dim(0)?;
    if let Some(bad) = t.iter().find(|&&x| x >= v as i64) {
        candle_core::bail!("target id {bad} is outside the vocabulary of {v}")
    }
    let op = LmNll {
        targets: Arc::new(t),
        kept: Mutex::new(None),
        keep: h.track_op() || w.track_op(),
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}
