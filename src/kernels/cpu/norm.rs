//! LayerNorm and RMSNorm over the last dimension with an affine weight (and LayerNorm's bias).
//! x: (N, C), w: (C,), b: (C,) -> y: (N, C).
//!
//!   LayerNorm: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps); y = xhat * w + b
//!   RMSNorm:   xhat = x * rstd,          rstd = 1 / sqrt(mean(x^2) + eps); y = xhat * w
//!
//! Backward recomputes each row's statistics (cheaper than storing them) and, with dxhat = dy * w:
//!   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))   (RMSNorm drops mean(dxhat))
//!   dw = sum over rows of dy * xhat, db = sum over rows of dy.

use super::parallel::{filled, parallel_map, SharedMut};
use super::storage::{f32_data, with_f32, CResult};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// Which norm and its epsilon.
#[derive(Clone, Copy)]
pub struct Stats {
    /// LayerNorm (subtract the mean) rather than RMSNorm.
    pub centered: bool,
    pub eps: f32,
}

impl Stats {
    /// (mean, rstd) of one row; mean is 0 for RMSNorm.
    fn of(&self, row: &[f32]) -> (f32, f32) {
        let c = row.len() as f32;
        let mean = if self.centered {
            row.iter().sum::<f32>() / c
        } else {
            0.0
        };
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / c;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    pub(super) fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let c = w.len();
        // Tasks of 16 rows.
        filled(x.len(), 16 * c, |i, yc| {
            let xc = &x[i * 16 * c..][..yc.len()];
            for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                let (mean, rstd) = self.of(xr);
                for j in 0..c {
                    yr[j] = (xr[j] - mean) * rstd * w[j] + b.map_or(0.0, |b| b[j]);
                }
            }
        })
    }

    /// (dx, dw, db) for the rows of x.
    fn backward(&self, x: &[f32], w: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dx = vec![0f32; x.len()];
        let (dw, db) = self.backward_into(x, w, g, &mut dx, false);
        (dx, dw, db)
    }

    /// (dw, db) for the rows of x, their dx written into `dx`, or added to it when `accumulate`
    /// (a residual stream's gradient).
    pub(super) fn backward_into(
        &self,
        x: &[f32],
        w: &[f32],
        g: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let c = w.len();
        let rows = x.len() / c;
        let chunk = rows
            .div_ceil(4 * candle_core::utils::get_num_threads())
            .max(1);
        let dxp = SharedMut(dx.as_mut_ptr());
        let parts = parallel_map(rows.div_ceil(chunk), |ci| {
            let (lo, hi) = (ci * chunk * c, ((ci + 1) * chunk).min(rows) * c);
            // SAFETY: rows of task ci only, inside dx.
            let dxc = unsafe { dxp.slice(lo, hi - lo) };
            let (xc, gc) = (&x[lo..hi], &g[lo..hi]);
            let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
            let mut xhat = vec![0f32; c];
            for ((dxr, xr), gr) in dxc
                .chunks_exact_mut(c)
                .zip(xc.chunks_exact(c))
                .zip(gc.chunks_exact(c))
            {
                let (mean, rstd) = self.of(xr);
                let (mut m1, mut m2) = (0f32, 0f32);
                for j in 0..c {
                    xhat[j] = (xr[j] - mean) * rstd;
                    let dxh = gr[j] * w[j];
                    m1 += dxh;
                    m2 += dxh * xhat[j];
                    dw[j] += gr[j] * xhat[j];
                    db[j] += gr[j];
                }
                let (m1, m2) = (
                    if self.centered { m1 / c as f32 } else { 0.0 },
                    m2 / c as f32,
                );
                for j in 0..c {
                    let d = rstd * (gr[j] * w[j] - m1 - xhat[j] * m2);
                    dxr[j] = if accumulate { dxr[j] + d } else { d };
                }
            }
            (dw, db)
        });
        let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
        for (pw, pb) in parts {
            dw.iter_mut().zip(&pw).for_each(|(x, y)| *x += y);
            db.iter_mut().zip(&pb).for_each(|(x, y)| *x += y);
        }
        (dw, db)
    }

    fn grads(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> CResult<(Tensor, Tensor, Tensor)> {
        let (dx, dw, db) = with_f32(x, "norm-backward", |xd| {
            with_f32(w, "norm-backward", |wd| {
                with_f32(g, "norm-backward", |gd| self.backward(xd, wd, gd))
            })
        })???;
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dw, w.shape(), dev)?,
            Tensor::from_vec(db, w.shape(), dev)?,
        ))
    }
}

/// A gradient only for an input that takes part in backprop: a frozen weight (LoRA's base) gets none.
fn wanted(input: &Tensor, grad: Tensor) -> Option<Tensor> {
    input.track_op().then_some(grad)
}

fn check(x: &Layout, w: &Layout) -> CResult<()> {
    let c = *x.shape().dims().last().unwrap_or(&0);
    if w.shape().dims() != [c] {
        candle_core::bail!("norm: weight of shape {:?} for rows of {c}", w.shape())
    }
    Ok(())
}

struct NormBias(Stats);

impl CustomOp3 for NormBias {
    fn name(&self) -> &'static str {
        "norm-bias"
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
        check(xl, wl)?;
        check(xl, bl)?;
        let (x, w, b) = (
            f32_data(xs, xl, self.name())?,
            f32_data(ws, wl, self.name())?,
            f32_data(bs, bl, self.name())?,
        );
        Ok((
            CpuStorage::F32(self.0.forward(x, w, Some(b))),
            xl.shape().clone(),
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
        let (dx, dw, db) = self.0.grads(x, w, g)?;
        Ok((wanted(x, dx), wanted(w, dw), wanted(b, db)))
    }
}

struct Norm(Stats);

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        "norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        check(xl, wl)?;
        let (x, w) = (
            f32_data(xs, xl, self.name())?,
            f32_data(ws, wl, self.name())?,
        );
        Ok((
            CpuStorage::F32(self.0.forward(x, w, None)),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.0.grads(x, w, g)?;
        Ok((wanted(x, dx), wanted(w, dw)))
    }
}

/// LayerNorm (`centered`) or RMSNorm of f32 CPU rows x (..., C) over C, times `w`, plus `b`
/// (`ops::norm` chooses).
pub fn norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stats: Stats) -> CResult<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, NormBias(stats)),
        None => x.apply_op2(&w, Norm(stats)),
    }
}
