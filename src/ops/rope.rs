//! Rotary position embedding in the Hugging Face layout ("rotate half": the first D/2 channels pair
//! with the last D/2 of each head).

use crate::error::Result;
use crate::kernels::cpu;
use crate::model::ModelConfig;
use candle_core::{Device, Tensor, D};

/// The cos and sin tables of every position of the context.
pub struct Rope {
    pub cos: Tensor, // (context, D)
    pub sin: Tensor, // (context, D)
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(cfg.context * d);
        let mut sin = Vec::with_capacity(cfg.context * d);
        for p in 0..cfg.context {
            // The same angles for both halves of the head.
            for _half in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (cfg.context, d), device)?,
            sin: Tensor::from_vec(sin, (cfg.context, d), device)?,
        })
    }

    /// Heads x: (B, heads, T, D) at positions start..start+T -> same shape, composed of candle ops.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, t, d) = x.dims4()?;
        let cos = self.cos.narrow(0, start, t)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, start, t)?.to_dtype(x.dtype())?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }

    /// The first `heads` heads of every row of qkv (B, T, W) at positions start.., in place of
    /// the heads' layout (`kernels::cpu::rope`); f32 CPU rows, the caller checks
    /// `kernels::cpu::features::applies`.
    pub fn apply_rows(&self, qkv: &Tensor, heads: usize, start: usize) -> Result<Tensor> {
        Ok(cpu::rope::rope_rows(
            qkv, &self.cos, &self.sin, heads, start,
        )?)
    }
}
