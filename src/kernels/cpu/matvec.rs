//! The decoding step's matrix-vector products on the CPU: a few rows of activations against f32 or
//! f16 weight rows, split over the cores by output column so that each weight row is read once.

use super::parallel::parallel_map;
use super::storage::{f32_data, CResult};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// y = x @ w^T for a handful of rows of x (decoding): every output is a dot product of a
/// contiguous weight row with x, split over the cores. GEMM kernels are built for large M and run
/// this shape on one core. Inference only (no backward): `linear` uses it when no gradient is tracked.
struct MatVec;

/// Sum of a[i] * b[i] with 32 independent accumulators (four 8-wide vectors, enough to hide the
/// FMA latency) so that the compiler vectorises it.
#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx2() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_body(a, b)
}

/// x (M, K) times the rows of w (N, K) -> (M, N), parallel over output columns (weight rows), so
/// that each weight row is read once for all M rows.
fn matvec<W: Sync>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    dot: impl Fn(&[f32], &[W]) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let chunk = super::parallel::items_per_task(n, m * k, 8);
    let cols = parallel_map(n.div_ceil(chunk), |c| {
        let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(n));
        let mut part = vec![0f32; m * (hi - lo)];
        for j in lo..hi {
            let wr = &w[j * k..(j + 1) * k];
            for r in 0..m {
                part[r * (hi - lo) + j - lo] = dot(&x[r * k..(r + 1) * k], wr);
            }
        }
        (lo, part)
    });
    for (lo, part) in cols {
        let width = part.len() / m;
        for r in 0..m {
            out[r * n + lo..r * n + lo + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    out
}

/// Dot product of f32 activations with f16 weights, in f32.
fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx2_f16c() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[f32], b: &[half::f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n elements of both; f16 is 2 bytes, eight to a 128-bit load.
        let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i) as *const __m128i);
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(pb));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(1)));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa), w0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), w1, acc1);
        i += 16;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1));
    let tail: f32 = a[i..n]
        .iter()
        .zip(&b[i..n])
        .map(|(x, y)| x * y.to_f32())
        .sum();
    lanes.iter().sum::<f32>() + tail
}

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "matvec"
    }

    /// x: (M, K), w: (N, K) -> (M, N).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("matvec: x has {k} columns but w has {k2}")
        }
        let x = f32_data(s1, l1, self.name())?;
        let out = match s2 {
            CpuStorage::F16(w) => {
                let (a, b) = l2.contiguous_offsets().ok_or_else(|| {
                    candle_core::Error::Msg("matvec: the weight must be contiguous".into())
                })?;
                matvec(x, &w[a..b], (m, n, k), dot_f16)
            }
            _ => matvec(x, f32_data(s2, l2, self.name())?, (m, n, k), dot),
        };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// x (M, K) f32 @ w^T for a contiguous CPU weight w (N, K) in f32 or f16 -> (M, N); no backward.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(w, &MatVec)
}
