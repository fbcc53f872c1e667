//! GPT-2's tanh GELU and SwiGLU's gating on the CPU, each one elementwise pass forward and one
//! backward (candle's own `gelu` backward builds a dozen composed ops). The slice kernels are shared
//! with the fused linear and block ops.

use super::exp::exp_shifted_sum;
use super::parallel::{filled, for_each_chunk_mut};
use super::storage::{f32_data, with_f32, CResult, ZipBackward};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

/// out = exp(2u) with u = k (x + a x^3), GELU's tanh argument, clamped to +-15 where tanh is
/// +-1 in f32; then tanh u = 1 - 2 / (out + 1).
fn exp_2u(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (2.0 * GELU_K * (v + GELU_A * v * v * v)).clamp(-30.0, 30.0);
    }
    exp_shifted_sum(out, 0.0);
}

/// gelu(x), elementwise over the cores: 0.5 x (1 + tanh u) = x E / (E + 1), E = exp(2u).
pub(crate) fn gelu_forward(x: &[f32]) -> Vec<f32> {
    filled(x.len(), 4096, |i, o| {
        let x = &x[i * 4096..][..o.len()];
        exp_2u(x, o);
        for (oj, &v) in o.iter_mut().zip(x) {
            *oj = v * *oj / (*oj + 1.0);
        }
    })
}

/// out = dy * gelu'(x): dy (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 a x^2)).
pub(crate) fn gelu_backward(x: &[f32], dy: &[f32], out: &mut [f32]) {
    for_each_chunk_mut(out, 4096, |i, o| {
        let (x, dy) = (&x[i * 4096..][..o.len()], &dy[i * 4096..][..o.len()]);
        exp_2u(x, o);
        for ((oj, &v), &g) in o.iter_mut().zip(x).zip(dy) {
            let th = 1.0 - 2.0 / (*oj + 1.0);
            let d = 0.5 * (1.0 + th)
                + 0.5 * v * (1.0 - th * th) * GELU_K * (1.0 + 3.0 * GELU_A * v * v);
            *oj = g * d;
        }
    });
}

/// exp(-gate), clamped so that it stays finite, into `o`: sigmoid(gate) = 1 / (1 + o).
fn exp_neg(gate: &[f32], o: &mut [f32]) {
    o.iter_mut()
        .zip(gate)
        .for_each(|(o, &g)| *o = (-g).clamp(-80.0, 80.0));
    exp_shifted_sum(o, 0.0);
}

/// SwiGLU's gating, silu(gate) * up, on rows (..., 2I) of gate then up -> (..., I). Backward, with
/// s = sigmoid(gate): d_up = dy gate s, d_gate = dy up s (1 + gate (1 - s)).
struct SwiGlu(usize);

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (h, i) = (f32_data(storage, layout, self.name())?, self.0);
        let out = swiglu_forward(h, i);
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().expect("rows") = i;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, h: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let i = self.0;
        let dh = with_f32(h, self.name(), |h| {
            with_f32(dy, self.name(), |dy| swiglu_backward(h, dy, i))
        })??;
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

/// silu(gate) * up on rows (N, 2I) of gate then up -> (N, I).
pub(crate) fn swiglu_forward(h: &[f32], i: usize) -> Vec<f32> {
    filled(h.len() / 2, 16 * i, |ci, rows| {
        for (r, o) in rows.chunks_exact_mut(i).enumerate() {
            let (gate, up) = h[(ci * 16 + r) * 2 * i..][..2 * i].split_at(i);
            exp_neg(gate, o);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + *o) * u;
            }
        }
    })
}

/// The gradient (N, 2I) of the rows h (N, 2I) of gate then up, for the gradient dy (N, I) of
/// silu(gate) * up.
pub(crate) fn swiglu_backward(h: &[f32], dy: &[f32], i: usize) -> Vec<f32> {
    filled(h.len(), 32 * i, |ci, rows| {
        for (r, o) in rows.chunks_exact_mut(2 * i).enumerate() {
            let row = ci * 16 + r;
            let (gate, up) = h[row * 2 * i..][..2 * i].split_at(i);
            let dyr = &dy[row * i..][..i];
            let (dg, du) = o.split_at_mut(i);
            exp_neg(gate, dg);
            for j in 0..i {
                let sg = 1.0 / (1.0 + dg[j]);
                du[j] = dyr[j] * gate[j] * sg;
                dg[j] = dyr[j] * up[j] * sg * (1.0 + gate[j] * (1.0 - sg));
            }
        }
    })
}

/// GPT-2's tanh GELU, elementwise; the backward pass is one more elementwise kernel instead of the
/// dozen composed ops candle's own `gelu` backward builds.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        Ok((CpuStorage::F32(gelu_forward(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2(&grad_res.contiguous()?, GELU_BACKWARD)?,
        ))
    }
}

const GELU_BACKWARD: ZipBackward = ZipBackward {
    name: "gelu-tanh-backward",
    f: |x, dy, _, out| gelu_backward(x, dy, out),
};

/// GPT-2's GELU of an f32 CPU tensor.
pub fn gelu(x: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// silu(gate) * up for an f32 CPU tensor h (..., 2I) of gate then up -> (..., I).
pub fn swiglu(h: &Tensor, i: usize) -> CResult<Tensor> {
    h.contiguous()?.apply_op1(SwiGlu(i))
}
