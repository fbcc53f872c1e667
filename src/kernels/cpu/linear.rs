//! The fully connected layer: y = x @ w^T + b. x: (..., I), w: (O, I), b: (O,) -> y: (..., O), the
//! leading dimensions (N rows in all) kept, so callers need no reshape (whose backward would add a
//! zero-filled copy of the gradient).
//!
//! Forward is one GEMM that starts from the bias rows. Backward: dx = dy @ w (N, I),
//! dw = dy^T @ x (O, I) and db = column sums of dy, the transposes being strides, not copies; a
//! gradient nobody asked for (a frozen base weight under LoRA) is not computed.

use super::activation::{gelu_backward, gelu_forward};
use super::gemm::{matmul, matmul_new, View};
use super::parallel::{column_sums, filled};
use super::storage::{f32_data, with_f32, CResult};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

fn dims(x: &Layout, w: &Layout) -> CResult<(usize, usize, usize)> {
    let i = x.shape().dims().last().copied().unwrap_or(0);
    let n = x.shape().elem_count() / i.max(1);
    let (o, i2) = w.shape().dims2()?;
    if i != i2 {
        candle_core::bail!("linear: x has {i} features but the weight expects {i2}")
    }
    Ok((n, i, o))
}

/// x's shape with the last dimension replaced by `o`.
fn out_shape(x: &Layout, o: usize) -> Shape {
    let mut dims = x.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    Shape::from(dims)
}

/// [residual +] x @ w^T [+ b] on slices: x (N, I), w (O, I), residual (N, O). With a bias or a
/// residual the output rows start as residual + bias and the GEMM adds into them.
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    (n, i, o): (usize, usize, usize),
) -> Vec<f32> {
    let (xv, wt) = (View::rows(x, i), View::rows(w, i).t());
    if b.is_none() && residual.is_none() {
        return matmul_new(n, o, i, xv, wt, 1.0);
    }
    let mut y = filled(n * o, 64 * o, |ci, rows| {
        for (r, yr) in rows.chunks_exact_mut(o).enumerate() {
            if let Some(res) = residual {
                yr.copy_from_slice(&res[(ci * 64 + r) * o..][..o]);
            }
            if let Some(b) = b {
                yr.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
    });
    matmul(n, o, i, &mut y, o, true, xv, wt, 1.0);
    y
}

/// [dx, dw, db] of y = x @ w^T + b for the gradient g of y, on slices: x (N, I), w (O, I),
/// g (N, O).
pub(super) fn grads(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    (n, i, o): (usize, usize, usize),
) -> [Vec<f32>; 3] {
    [
        matmul_new(n, i, o, View::rows(g, o), View::rows(w, i), 1.0),
        matmul_new(o, i, n, View::rows(g, o).t(), View::rows(x, i), 1.0),
        column_sums(g, o),
    ]
}

/// dx and dw (each only when wanted) for y = x @ w^T.
pub(super) fn backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> CResult<(Option<Tensor>, Option<Tensor>, Tensor)> {
    let (o, i) = w.dims2()?;
    let n = x.elem_count() / i.max(1);
    let g = g.contiguous()?;
    let dev = x.device();
    with_f32(&g, "linear-backward", |gd| -> CResult<_> {
        let dx = if x.track_op() {
            let dx = with_f32(w, "linear-backward", |wd| {
                matmul_new(n, i, o, View::rows(gd, o), View::rows(wd, i), 1.0)
            })?;
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let dw = with_f32(x, "linear-backward", |xd| {
                matmul_new(o, i, n, View::rows(gd, o).t(), View::rows(xd, i), 1.0)
            })?;
            Some(Tensor::from_vec(dw, (o, i), dev)?)
        } else {
            None
        };
        Ok((dx, dw, g.clone()))
    })?
}

struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let d = dims(xl, wl)?;
        let x = f32_data(xs, xl, self.name())?;
        let w = f32_data(ws, wl, self.name())?;
        Ok((
            CpuStorage::F32(forward(x, w, None, None, d)),
            out_shape(xl, d.2),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, g)?;
        Ok((dx, dw))
    }
}

struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let d = dims(xl, wl)?;
        if bl.shape().dims() != [d.2] {
            candle_core::bail!("linear: bias of shape {:?} for {} outputs", bl.shape(), d.2)
        }
        let x = f32_data(xs, xl, self.name())?;
        let w = f32_data(ws, wl, self.name())?;
        let b = f32_data(bs, bl, self.name())?;
        Ok((
            CpuStorage::F32(forward(x, w, Some(b), None, d)),
            out_shape(xl, d.2),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, g) = backward(x, w, g)?;
        let db = if b.track_op() {
            let o = b.dim(0)?;
            let db = with_f32(&g, self.name(), |gd| column_sums(gd, o))?;
            Some(Tensor::from_vec(db, o, b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// y = x @ w^T (+ b) for f32 CPU tensors x: (..., I), w: (O, I), b: (O,) -> (..., O), one GEMM
/// (`ops::linear` chooses).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearBias),
        None => x.apply_op2(&w, LinearNoBias),
    }
}

/// gelu(x @ w^T + b), GPT-2's MLP up-projection and activation as one op: the pre-activation
/// (N, O) is kept by the op for its backward instead of being a graph node of its own, whose
/// gradient candle would zero-fill and accumulate.
struct LinearGelu {
    pre: std::sync::Mutex<Option<Vec<f32>>>,
    keep: bool,
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "linear-gelu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (out, shape) = LinearBias.cpu_fwd(xs, xl, ws, wl, bs, bl)?;
        let CpuStorage::F32(pre) = out else {
            candle_core::bail!("linear-gelu: f32 expected")
        };
        let y = gelu_forward(&pre);
        if self.keep {
            *self.pre.lock().expect("not poisoned") = Some(pre);
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(pre) = self.pre.lock().expect("not poisoned").take() else {
            candle_core::bail!(
                "linear-gelu: backward without a forward that kept its pre-activation"
            )
        };
        let mut dpre = vec![0f32; pre.len()];
        with_f32(g, self.name(), |gd| gelu_backward(&pre, gd, &mut dpre))?;
        let dpre = Tensor::from_vec(dpre, y.shape(), y.device())?;
        LinearBias.bwd(x, w, b, y, &dpre)
    }
}

/// gelu(x @ w^T + b) for x: (..., I), w: (O, I), b: (O,) -> (..., O), fused on the CPU in f32.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let keep = x.track_op() || w.track_op() || b.track_op();
    let op = LinearGelu {
        pre: std::sync::Mutex::new(None),
        keep,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}
