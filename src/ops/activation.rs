//! The MLP's activations: GPT-2's tanh GELU ("gelu_new") and SwiGLU's gating silu(gate) * up.

use crate::kernels::cpu;
use candle_core::{Tensor, D};

type CResult<T> = candle_core::Result<T>;

/// GPT-2's GELU (tanh approximation, "gelu_new"): the CPU kernel in f32, elsewhere candle's.
pub fn gelu(x: &Tensor) -> CResult<Tensor> {
    if cpu::features::applies(x) {
        return cpu::activation::gelu(x);
    }
    x.gelu()
}

/// silu(gate) * up for h (..., 2I) holding gate then up -> (..., I), one pass over the rows (and
/// one for backward), f32 on the CPU; elsewhere candle's ops.
pub fn swiglu(h: &Tensor, i: usize) -> CResult<Tensor> {
    if h.dims().last() != Some(&(2 * i)) {
        candle_core::bail!("swiglu: rows of {:?} are not gate and up of {i}", h.dims())
    }
    if !cpu::features::applies(h) {
        let gate = h.narrow(D::Minus1, 0, i)?;
        let up = h.narrow(D::Minus1, i, i)?;
        return candle_nn::ops::silu(&gate)? * up;
    }
    cpu::activation::swiglu(h, i)
}
