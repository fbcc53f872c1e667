//! LayerNorm and RMSNorm over the channels, with affine weights (and a bias for LayerNorm), the
//! statistics in f32 whatever the compute dtype.

use super::ones::{ones, rows_of};
use crate::error::Result;
use crate::kernels::cpu;
use crate::model::config::{ModelConfig, NormKind};
use candle_core::{DType, Tensor, D};
use std::collections::BTreeMap;

type CResult<T> = candle_core::Result<T>;

/// A norm layer: its kind, weight, bias and epsilon.
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    /// The norm `name` (`{name}.weight`, `{name}.bias`) of a model's weights.
    pub fn new(w: &BTreeMap<String, Tensor>, name: &str, cfg: &ModelConfig) -> Self {
        Norm {
            kind: cfg.norm,
            weight: w[&format!("{name}.weight")].clone(),
            bias: w.get(&format!("{name}.bias")).cloned(),
            eps: cfg.norm_eps,
        }
    }

    /// x: (B, T, C) -> (B, T, C), normalised over C.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Statistics in f32 whatever the compute dtype (bf16 mixed precision).
        let dtype = x.dtype();
        let x = &x.to_dtype(DType::F32)?;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let bias = self.bias.as_ref().map(f32).transpose()?;
        let centered = self.kind == NormKind::LayerNorm;
        let y = norm(x, &f32(&self.weight)?, bias.as_ref(), self.eps, centered)?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// LayerNorm (`centered`) or RMSNorm of x (..., C) over C, times `w`, plus `b`; the fused CPU
/// kernel in f32, elsewhere [`portable`].
pub fn norm(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f64,
    centered: bool,
) -> CResult<Tensor> {
    let applies = cpu::features::applies;
    if applies(x) && applies(w) && b.is_none_or(applies) {
        let stats = cpu::norm::Stats {
            centered,
            eps: eps as f32,
        };
        return cpu::norm::norm(x, w, b, stats);
    }
    portable(x, w, b, eps, centered)
}

/// LayerNorm (`centered`) or RMSNorm of x (..., C) over C, times `w`, plus `b`. As
/// [`reference`], composed of matrix products with ones (row means, the expansion of
/// per-row and per-channel vectors) and elementwise ops on contiguous tensors, so that candle's
/// own backward passes are index-free too.
pub fn portable(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f64,
    centered: bool,
) -> CResult<Tensor> {
    let c = x.dim(D::Minus1)?;
    let n = x.elem_count() / c;
    let x2 = x.contiguous()?.reshape((n, c))?;
    let mean = |t: &Tensor| t.matmul(&(ones((c, 1), t)? / c as f64)?);
    let spread = |t: &Tensor| t.matmul(&ones((1, c), t)?);
    let xc = match centered {
        true => (&x2 - spread(&mean(&x2)?)?)?,
        false => x2,
    };
    let rstd = (mean(&xc.sqr()?)? + eps)?.sqrt()?.recip()?;
    let y = ((xc * spread(&rstd)?)? * rows_of(w, n)?)?;
    let y = match b {
        Some(b) => (y + rows_of(b, n)?)?,
        None => y,
    };
    y.reshape(x.shape())
}

/// The composed candle version, for tests.
pub fn reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f64,
    centered: bool,
) -> CResult<Tensor> {
    let xn = match centered {
        true => {
            let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + eps)?.sqrt()?)?
        }
        false => {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(ms + eps)?.sqrt()?)?
        }
    };
    let y = xn.broadcast_mul(w)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}
