//! AdamW with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW` computes it:
//!
//!   p <- p * (1 - lr * wd)                       (matmul weights only)
//!   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//!   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

use crate::error::{Error, Result};
use crate::model::params::is_decayed;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Steps taken (t in the bias corrections).
    pub t: u64,
    /// First and second moments by parameter name.
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &BTreeMap<String, Var>) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (k, p) in params {
            m.insert(k.clone(), p.zeros_like()?);
            v.insert(k.clone(), p.zeros_like()?);
        }
        Ok(AdamW { cfg, t: 0, m, v })
    }

    /// One update of every parameter with a gradient. `grad_scale` multiplies the gradients first
    /// (gradient clipping).
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.t += 1;
        let AdamWConfig {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (name, p) in params {
            let Some(g) = grads.get(name) else { continue };
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g.clone()
            };
            let m = self
                .m
                .get_mut(name)
                .ok_or_else(|| Error::Training(format!("no optimizer state for '{name}'")))?;
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            let v = self.v.get_mut(name).expect("m and v have the same keys");
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&*v / bc2)?.sqrt()? + eps)?;
            let update = ((&*m / bc1)? / denom)?;
            let mut new = p.as_tensor().clone();
            if weight_decay > 0.0 && is_decayed(name) {
                new = (new * (1.0 - lr * weight_decay))?;
            }
            p.set(&(new - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients.
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}
