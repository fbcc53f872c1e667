//! The x86 SIMD form of `blockq`'s Q8 row dot product (one weight row of 8-bit blocks against rows
//! of f32 activations), on AVX2 with FMA and F16C (which AVX-512 CPUs have too). A block's codes
//! are widened to f32 once and multiplied with every row of x, so a weight row is read from memory
//! once however many rows a step decodes.

use super::blockq::{Format, QK};
use std::arch::x86_64::*;

/// Rows of x that share one decoded block (their accumulators stay in registers).
pub(super) const ROWS: usize = 4;

/// Whether this CPU has AVX2, FMA and F16C, which the blocks' kernels need.
pub(super) fn avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// The f16 at p, as f32.
///
/// # Safety
/// F16C is available; p points at two readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sum_lanes(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// o[i] = the Q8 weight row `row` . row i of xs (f32), for R rows.
///
/// # Safety
/// AVX2, FMA and F16C are available; `row` holds whole Q8 blocks and xs R rows of their width;
/// o.len() == R.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn row_dot_q8<const R: usize>(row: &[u8], xs: &[f32], o: &mut [f32]) {
    const BB: usize = Format::Q8.block_bytes();
    let nb = row.len() / BB;
    let cols = nb * QK;
    let widen = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let p = row.as_ptr().add(b * BB);
        let d = _mm256_set1_ps(f16_at(p));
        let q = p.add(2) as *const __m128i;
        let (q0, q1) = (_mm_loadu_si128(q), _mm_loadu_si128(q.add(1)));
        let v = [
            widen(q0),
            widen(_mm_srli_si128::<8>(q0)),
            widen(q1),
            widen(_mm_srli_si128::<8>(q1)),
        ];
        for (i, a) in acc.iter_mut().enumerate() {
            let xb = xs.as_ptr().add(i * cols + b * QK);
            let mut dot = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));
            dot = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb.add(8)), dot);
            dot = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb.add(16)), dot);
            dot = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb.add(24)), dot);
            *a = _mm256_fmadd_ps(d, dot, *a);
        }
    }
    for (oi, a) in o.iter_mut().zip(acc) {
        *oi = sum_lanes(a);
    }
}
