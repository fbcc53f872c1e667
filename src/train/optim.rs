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
            let decay = if is_decayed(name) { weight_decay } else { 0.0 };
            if crate::kernels::cpu::features::applies(p.as_tensor())
                && crate::kernels::cpu::features::applies(g)
            {
                let (m, v) = (&self.m[name], &self.v[name]);
                let h = Hyper {
                    b1,
                    b2,
                    eps,
                    lr,
                    decay: 1.0 - lr * decay,
                    bc1,
                    bc2,
                    scale: grad_scale,
                };
                let (np, nm, nv) = fused_update(p.as_tensor(), g, m, v, h)?;
                p.set(&np)?;
                self.m.insert(name.clone(), nm);
                self.v.insert(name.clone(), nv);
                continue;
            }
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
            if decay > 0.0 {
                new = (new * (1.0 - lr * decay))?;
            }
            p.set(&(new - (update * lr)?)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
/// The hyperparameters of one update, in f64: the per-element arithmetic runs in f64 too (the pass
/// is bound by memory, not arithmetic), so the update is exact to f32 rounding of its result.
struct Hyper {
    b1: f64,
    b2: f64,
    eps: f64,
    lr: f64,
    /// 1 - lr * weight decay (1 for parameters without decay).
    decay: f64,
    bc1: f64,
    bc2: f64,
    /// Gradient multiplier (clipping).
    scale: f64,
}

/// One AdamW update of a CPU f32 parameter in a single pass over p, g, m and v (the composed
/// version makes a dozen passes, each allocating): (new p, new m, new v).
fn fused_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: Hyper,
) -> Result<(Tensor, Tensor, Tensor)> {
    use crate::kernels::cpu::parallel::{filled, SharedMut};
    use crate::kernels::cpu::storage::with_f32;
    let n = p.elem_count();
    let (mut nm, mut nv) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
    const CHUNK: usize = 1 << 14;
    let mut pass = |pd: &[f32], gd: &[f32], md: &[f32], vd: &[f32]| {
        // New m and v: the same elements as the chunk of new p, written through shared pointers.
        let (mp, vp) = (SharedMut(nm.as_mut_ptr()), SharedMut(nv.as_mut_ptr()));
        filled(n, CHUNK, |c, po| {
            let o = c * CHUNK;
            // SAFETY: elements o..o + po.len() of m's and v's allocations, this task's alone.
            let (mo, vo) = unsafe { (mp.zeroed_slice(o, po.len()), vp.zeroed_slice(o, po.len())) };
            for i in 0..po.len() {
                let gi = gd[o + i] as f64 * h.scale;
                let mi = h.b1 * md[o + i] as f64 + (1.0 - h.b1) * gi;
                let vi = h.b2 * vd[o + i] as f64 + (1.0 - h.b2) * gi * gi;
                let update = (mi / h.bc1) / ((vi / h.bc2).sqrt() + h.eps);
                po[i] = (pd[o + i] as f64 * h.decay - h.lr * update) as f32;
                mo[i] = mi as f32;
                vo[i] = vi as f32;
            }
        })
    };
    let op = "adamw";
    let np = with_f32(p, op, |pd| {
        with_f32(g, op, |gd| {
            with_f32(m, op, |md| with_f32(v, op, |vd| pass(pd, gd, md, vd)))
        })
    })????;
    // SAFETY: the pass wrote every element of both (each chunk of p's n elements).
    unsafe {
        nm.set_len(n);
        nv.set_len(n);
    }
    let dev = p.device();
    Ok((
        Tensor::from_vec(np, p.shape(), dev)?,
        Tensor::from_vec(nm, p.shape(), dev)?,
        Tensor::from_vec(nv, p.shape(), dev)?,
    ))
}

/// Global L2 norm of all gradients. Off the CPU the squares are summed on the device and read back
/// once (one synchronization, not one per tensor).
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut sq = 0f64;
    let mut on_device = Vec::new();
    for g in grads.values() {
        if crate::kernels::cpu::features::applies(g) {
            const CHUNK: usize = 1 << 14;
            sq += crate::kernels::cpu::storage::with_f32(g, "grad-norm", |d| {
                crate::kernels::cpu::parallel::parallel_map(d.len().div_ceil(CHUNK), |c| {
                    let part = &d[c * CHUNK..((c + 1) * CHUNK).min(d.len())];
                    part.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
                })
                .into_iter()
                .sum::<f64>()
            })?;
            continue;
        }
        on_device.push(g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?);
    }
    if !on_device.is_empty() {
        sq += Tensor::stack(&on_device, 0)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}
