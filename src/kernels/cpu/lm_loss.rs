//! The output projection and the per-token negative log-likelihood as one op: h (N, C) and the
//! output weight w (V, C) give nll (N,) for the targets (negative = ignored, nll 0).
//!
//! The (N, V) logits, the largest activation of a training step, live inside the op: the forward
//! pass keeps them with each row's log-sum-exp, and the backward pass turns them in place into the
//! gradient (softmax - onehot) * dnll, then runs dh = G w and dw = G^T h. Composed (a linear layer,
//! then the loss), the same step allocated the logits' gradient twice, once as the loss's output and
//! once as candle's zero-filled accumulator, and added one into the other.

use super::gemm::{matmul_new, View};
use super::nll::{nll_grad_row, row_nll};
use super::parallel::{for_each_chunk_mut, parallel_map};
use super::storage::{f32_data, CResult};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
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
        let (nll, lse): (Vec<f32>, Vec<f32>) =
            parallel_map(n, |i| row_nll(&logits[i * v..(i + 1) * v], self.targets[i]))
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
        let v = w.dim(0)?;
        let g = dnll.to_vec1::<f32>()?;
        for_each_chunk_mut(&mut logits, v, |i, row| {
            nll_grad_row(row, lse[i], self.targets[i], g[i])
        });
        // The rest is the linear layer's backward pass on that gradient.
        let grad = Tensor::from_vec(logits, (lse.len(), v), h.device())?;
        let (dh, dw, _) = super::linear::backward(h, w, &grad)?;
        Ok((dh, dw))
    }
}

/// Per-row negative log-likelihood of checked `targets` (negative = ignored) under the logits
/// h @ w^T, for f32 CPU tensors h: (N, C) and w: (V, C) (`ops::loss::projected_nll` chooses).
pub fn lm_nll(h: &Tensor, w: &Tensor, targets: Vec<i64>) -> CResult<Tensor> {
    let op = LmNll {
        targets: Arc::new(targets),
        kept: Mutex::new(None),
        keep: h.track_op() || w.track_op(),
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}
