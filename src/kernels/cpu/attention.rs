//! Causal self-attention straight out of the fused qkv projection, without rotary embeddings
//! (GPT-2) and without a cache (training, scoring). qkv: (B, T, (H + 2K) * D) holding H query heads,
//! then K key heads, then K value heads -> y: (B, T, H * D), heads side by side as the output
//! projection reads them. Query head h uses key/value head h / (H / K) (grouped-query attention).
//!
//! One task per (sequence, key/value head): its query heads, in blocks of `BLOCK` query rows whose
//! scores stop at the block's last key (the causal diagonal), so the upper triangle is mostly never
//! computed and a block's scores (BLOCK x T) stay in cache. Nothing is stored for backward: it
//! recomputes each block's probabilities, then
//!   dV += P^T dY,  dP = dY V^T,  dS = P * (dP - rowsum(dY * Y)),  dQ = s dS K,  dK += s dS^T Q
//! with s = 1 / sqrt(D). Each task writes only its own heads' columns of y (or of dqkv).

use super::gemm::{matmul, matmul_ptr};
use super::parallel::{parallel_for, parallel_for_sized, SharedMut};
use super::storage::{f32_data, with_f32, with_f32_rows, CResult};
use super::view::View;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Query rows per block.
const BLOCK: usize = 64;

/// B sequences of T tokens, H query heads and K key/value heads of D channels.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) h: usize,
    pub(crate) k: usize,
    pub(crate) d: usize,
}

impl Geometry {
    /// Width of a qkv row.
    fn w(&self) -> usize {
        (self.h + 2 * self.k) * self.d
    }
    /// Offset of query head `hq` (or key head `g` at H + g, value head at H + K + g) at time 0 of
    /// sequence `b`.
    fn col(&self, b: usize, head: usize) -> usize {
        b * self.t * self.w() + head * self.d
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// Softmax of each row of the block `s` (rows r0.., `n` keys each) over the keys it may see
/// (0..=r0 + i); the rest become 0.
fn causal_softmax_rows(s: &mut [f32], n: usize, r0: usize) {
    for (i, row) in s.chunks_exact_mut(n).enumerate() {
        let visible = r0 + i + 1;
        let (seen, future) = row.split_at_mut(visible);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv = 1.0 / super::exp::exp_shifted_sum(seen, max);
        seen.iter_mut().for_each(|v| *v *= inv);
        future.fill(0.0);
    }
}

/// The probabilities of query rows r0..r1 of head `hq` against keys 0..r1 of key head `g`,
/// into `p` ((r1 - r0) x r1).
#[allow(clippy::too_many_arguments)]
fn probabilities(
    qkv: &[f32],
    g: &Geometry,
    b: usize,
    hq: usize,
    kh: usize,
    r0: usize,
    r1: usize,
    p: &mut [f32],
) {
    let (w, n) = (g.w(), r1);
    let q = View::rows(&qkv[g.col(b, hq) + r0 * w..], w);
    let kt = View::rows(&qkv[g.col(b, g.h + kh)..], w).t();
    matmul(r1 - r0, n, g.d, p, n, false, q, kt, g.scale());
    causal_softmax_rows(&mut p[..(r1 - r0) * n], n, r0);
}

pub(super) fn forward(qkv: &[f32], g: Geometry) -> Vec<f32> {
    let (t, hd, w) = (g.t, g.h * g.d, g.w());
    let mut y = vec![0f32; g.b * t * hd];
    let out = SharedMut(y.as_mut_ptr());
    let rep = g.h / g.k;
    parallel_for(g.b * g.k, |task| {
        let (b, kh) = (task / g.k, task % g.k);
        let mut p = vec![0f32; BLOCK * t];
        for hq in kh * rep..(kh + 1) * rep {
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                probabilities(qkv, &g, b, hq, kh, r0, r1, &mut p);
                let v = View::rows(&qkv[g.col(b, g.h + g.k + kh)..], w);
                // SAFETY: rows r0..r1, columns hq*D..(hq+1)*D of sequence b of y: inside y, and
                // written by this task alone (it owns query head hq of sequence b).
                unsafe {
                    let dst = out.at(b * t * hd + r0 * hd + hq * g.d);
                    matmul_ptr(r1 - r0, g.d, r1, dst, hd, false, View::rows(&p, r1), v, 1.0);
                }
            }
        }
    });
    y
}

pub(super) fn backward(qkv: &[f32], y: &[f32], dy: &[f32], g: Geometry) -> Vec<f32> {
    let (t, hd, w) = (g.t, g.h * g.d, g.w());
    let mut dqkv = vec![0f32; qkv.len()];
    let out = SharedMut(dqkv.as_mut_ptr());
    let rep = g.h / g.k;
    let s = g.scale();
    parallel_for(g.b * g.k, |task| {
        let (b, kh) = (task / g.k, task % g.k);
        let mut p = vec![0f32; BLOCK * t];
        let mut dp = vec![0f32; BLOCK * t];
        let mut rowdot = vec![0f32; t];
        let kview = View::rows(&qkv[g.col(b, g.h + kh)..], w);
        let vview = View::rows(&qkv[g.col(b, g.h + g.k + kh)..], w);
        for hq in kh * rep..(kh + 1) * rep {
            let yo = b * t * hd + hq * g.d;
            for (i, r) in rowdot.iter_mut().enumerate() {
                let (yr, dyr) = (&y[yo + i * hd..][..g.d], &dy[yo + i * hd..][..g.d]);
                *r = yr.iter().zip(dyr).map(|(a, c)| a * c).sum();
            }
            for r0 in (0..t).step_by(BLOCK) {
                let (r1, m) = ((r0 + BLOCK).min(t), (r0 + BLOCK).min(t) - r0);
                probabilities(qkv, &g, b, hq, kh, r0, r1, &mut p);
                let p = &p[..m * r1];
                let dyb = View::rows(&dy[yo + r0 * hd..], hd);
                // dP = dY V^T, then dS = P * (dP - rowdot) in place.
                matmul(m, r1, g.d, &mut dp, r1, false, dyb, vview.t(), 1.0);
                for (i, (dpr, pr)) in dp.chunks_exact_mut(r1).zip(p.chunks_exact(r1)).enumerate() {
                    let rd = rowdot[r0 + i];
                    dpr.iter_mut()
                        .zip(pr)
                        .for_each(|(x, &pv)| *x = pv * (*x - rd));
                }
                let ds = View::rows(&dp[..m * r1], r1);
                let qb = View::rows(&qkv[g.col(b, hq) + r0 * w..], w);
                // SAFETY: dQ rows r0..r1 of head hq, and dK / dV rows 0..r1 of key head kh, all of
                // sequence b: inside dqkv and owned by this task (key head kh of sequence b and
                // its query heads).
                unsafe {
                    let dv = out.at(g.col(b, g.h + g.k + kh));
                    matmul_ptr(r1, g.d, m, dv, w, true, View::rows(p, r1).t(), dyb, 1.0);
                    let dq = out.at(g.col(b, hq) + r0 * w);
                    matmul_ptr(m, g.d, r1, dq, w, false, ds, kview, s);
                    let dk = out.at(g.col(b, g.h + kh));
                    matmul_ptr(r1, g.d, m, dk, w, true, ds.t(), qb, s);
                }
            }
        }
    });
    dqkv
}

struct CausalAttention(Geometry);

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let qkv = f32_data(s, l, self.name())?;
        let g = self.0;
        Ok((
            CpuStorage::F32(forward(qkv, g)),
            Shape::from((g.b, g.t, g.h * g.d)),
        ))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let g = self.0;
        let d = with_f32(qkv, self.name(), |q| {
            with_f32(y, self.name(), |yd| {
                with_f32(dy, self.name(), |dyd| backward(q, yd, dyd, g))
            })
        })???;
        Ok(Some(Tensor::from_vec(d, qkv.shape(), qkv.device())?))
    }
}

pub(crate) fn geometry(qkv: &Tensor, h: usize, k: usize, d: usize) -> CResult<Geometry> {
    let (b, t, width) = qkv.dims3()?;
    if k == 0 || !h.is_multiple_of(k) || width != (h + 2 * k) * d {
        candle_core::bail!(
            "attention: a qkv row of {width} does not hold {h} query and {k} key/value heads of {d}"
        )
    }
    Ok(Geometry { b, t, h, k, d })
}

/// Causal self-attention of f32 CPU rows qkv (B, T, (H + 2K) * D) -> (B, T, H * D), fused
/// (`ops::attention` chooses).
pub fn causal_attention(qkv: &Tensor, h: usize, k: usize, d: usize) -> CResult<Tensor> {
    let g = geometry(qkv, h, k, d)?;
    qkv.contiguous()?.apply_op1(CausalAttention(g))
}

/// Attention of the T new queries in qkv (B, T, (H + 2K) * D) over a cache of keys and values
/// (B, K, S, D) whose last T positions are the new tokens (decoding, prompts after earlier turns):
/// -> (B, T, H * D). Query i sees keys 0..=S - T + i. Keys and values may be strided views (a
/// cache's buffers with room to spare) as long as their rows are contiguous; they are read in
/// place. Inference only (no backward pass); f32 on the CPU (`ops::attention` chooses). One task
/// per (sequence, query head).
pub fn cached_attention(qkv: &Tensor, keys: &Tensor, values: &Tensor, h: usize) -> CResult<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    let (b2, k, s, d) = keys.dims4()?;
    let heads_ok = k > 0 && h.is_multiple_of(k) && w == (h + 2 * k) * d;
    if b2 != b || values.dims() != keys.dims() || !heads_ok || s < t {
        candle_core::bail!(
            "cached attention: qkv {:?} with {h} query heads against keys {:?} and values {:?}",
            qkv.dims(),
            keys.dims(),
            values.dims()
        )
    }
    let (hd, rep, scale) = (h * d, h / k, 1.0 / (d as f32).sqrt());
    let y = with_f32(qkv, "cached-attention", |q| {
        with_f32_rows(keys, "cached-attention", |kc, ks| {
            with_f32_rows(values, "cached-attention", |vc, vs| {
                let mut y = vec![0f32; b * t * hd];
                let out = SharedMut(y.as_mut_ptr());
                // Per (sequence, head): T rows of S scores and S values of D channels.
                parallel_for_sized(b * h, 2 * t * s * d, |task| {
                    let (bi, hq) = (task / h, task % h);
                    let kv = hq / rep;
                    let kk = Rows::new(kc, ks, bi, kv, s, d);
                    let vv = Rows::new(vc, vs, bi, kv, s, d);
                    let mut p = vec![0f32; s];
                    for i in 0..t {
                        let qr = &q[(bi * t + i) * w + hq * d..][..d];
                        let seen = s - t + i + 1;
                        // SAFETY: row i, columns hq*D.. of sequence bi of y: this task's alone.
                        let yr = unsafe { out.slice((bi * t + i) * hd + hq * d, d) };
                        attend_row(qr, &kk, &vv, scale, &mut p[..seen], yr);
                    }
                });
                y
            })
        })
    })???;
    Tensor::from_vec(y, (b, t, hd), qkv.device())
}

/// The S rows of D channels of one (sequence, key/value head) in a strided buffer.
struct Rows<'a> {
    data: &'a [f32],
    stride: usize,
    d: usize,
}

impl<'a> Rows<'a> {
    /// Rows of sequence bi, head kv in `data` with strides `st` (B, K, S, D; st[3] = 1).
    fn new(data: &'a [f32], st: &[usize], bi: usize, kv: usize, s: usize, d: usize) -> Self {
        let from = bi * st[0] + kv * st[1];
        let len = if s == 0 { 0 } else { (s - 1) * st[2] + d };
        Rows {
            data: &data[from..][..len],
            stride: st[2],
            d,
        }
    }

    fn row(&self, j: usize) -> &[f32] {
        &self.data[j * self.stride..][..self.d]
    }
}

/// One query row q against the first p.len() keys: y += softmax(scale * q . k_j) v_j.
fn attend_row(q: &[f32], keys: &Rows, values: &Rows, scale: f32, p: &mut [f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx512() {
            // SAFETY: avx512f is available; q, y and every row hold 16 N floats.
            match q.len() {
                32 => return unsafe { avx512::attend_row::<2>(q, keys, values, scale, p, y) },
                64 => return unsafe { avx512::attend_row::<4>(q, keys, values, scale, p, y) },
                128 => return unsafe { avx512::attend_row::<8>(q, keys, values, scale, p, y) },
                _ => {}
            }
        }
        if super::features::avx2() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { attend_row_avx2(q, keys, values, scale, p, y) };
        }
    }
    attend_row_body(q, keys, values, scale, p, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_row_avx2(
    q: &[f32],
    keys: &Rows,
    values: &Rows,
    scale: f32,
    p: &mut [f32],
    y: &mut [f32],
) {
    attend_row_body(q, keys, values, scale, p, y)
}

#[inline(always)]
fn attend_row_body(
    q: &[f32],
    keys: &Rows,
    values: &Rows,
    scale: f32,
    p: &mut [f32],
    y: &mut [f32],
) {
    for (j, pj) in p.iter_mut().enumerate() {
        *pj = scale * super::matvec::dot_body(q, keys.row(j));
    }
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv = 1.0 / super::exp::exp_shifted_sum(p, max);
    for (j, pj) in p.iter().enumerate() {
        let pj = pj * inv;
        y.iter_mut()
            .zip(values.row(j))
            .for_each(|(y, v)| *y += pj * v);
    }
}

/// `attend_row` for heads of D = 16 N channels: the scaled query and the output row stay in
/// registers, one 16-lane reduction per key.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Rows;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_row<const N: usize>(
        q: &[f32],
        keys: &Rows,
        values: &Rows,
        scale: f32,
        p: &mut [f32],
        y: &mut [f32],
    ) {
        assert!(q.len() == 16 * N && y.len() == 16 * N && keys.d == 16 * N && values.d == 16 * N);
        let mut qv = [_mm512_setzero_ps(); N];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm512_mul_ps(_mm512_loadu_ps(q[16 * c..].as_ptr()), _mm512_set1_ps(scale));
        }
        for (j, pj) in p.iter_mut().enumerate() {
            let k = keys.row(j).as_ptr();
            let mut acc = [_mm512_setzero_ps(); 2];
            for (c, qc) in qv.iter().enumerate() {
                acc[c % 2] = _mm512_fmadd_ps(*qc, _mm512_loadu_ps(k.add(16 * c)), acc[c % 2]);
            }
            *pj = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
        let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv = 1.0 / crate::kernels::cpu::exp::exp_shifted_sum(p, max);
        // Two sets of accumulators (even and odd keys) so that consecutive FMAs do not wait on
        // each other.
        let mut acc = [[_mm512_setzero_ps(); N]; 2];
        for (j, &pj) in p.iter().enumerate() {
            let (w, v, a) = (_mm512_set1_ps(pj), values.row(j).as_ptr(), &mut acc[j % 2]);
            for (c, ac) in a.iter_mut().enumerate() {
                *ac = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.add(16 * c)), *ac);
            }
        }
        let inv = _mm512_set1_ps(inv);
        for c in 0..N {
            let out = y[16 * c..].as_mut_ptr();
            let sum = _mm512_add_ps(acc[0][c], acc[1][c]);
            _mm512_storeu_ps(out, _mm512_fmadd_ps(sum, inv, _mm512_loadu_ps(out)));
        }
    }
}
