//! exp over a slice, 16 lanes at a time with AVX-512 and 8 with AVX2 (libm's `expf` is one value
//! per call and was 8% of a training step, inside the softmaxes and the loss): x = n ln2 + r with
//! |r| <= ln2 / 2, exp(r) by a degree-6 polynomial (Cephes' `expf` coefficients, within 2 ulp), then
//! scaled by 2^n (`vscalefps` with AVX-512; with AVX2 two exponent-field multiplies, 2^(n/2) each,
//! so that n = 128 and n = -126 stay exact). Both give the same value per element; elsewhere, and
//! for the tail, the scalar `exp`.

/// Below this the result is 0 (or denormal), above the next it overflows: both kernels clamp.
#[cfg(target_arch = "x86_64")]
const X_MIN: f32 = -87.3;
#[cfg(target_arch = "x86_64")]
const X_MAX: f32 = 88.7;
/// ln 2 split in two for precision: r = x - n LN2[0] - n LN2[1].
#[cfg(target_arch = "x86_64")]
const LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
/// exp(r) = 1 + r + r^2 (((((P0 r + P1) r + P2) r + P3) r + P4) r + P5).
#[cfg(target_arch = "x86_64")]
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// xs[i] = exp(xs[i] - shift); returns the sum of the results.
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: avx512f is available.
        return unsafe { avx512::exp_shifted_sum(xs, shift) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::features::avx2() {
        // SAFETY: avx2 and fma are available.
        return unsafe { avx2::exp_shifted_sum(xs, shift) };
    }
    let mut sum = 0.0;
    for v in xs.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// The sum of exp(x - shift) over xs, which is left as it is.
pub fn exp_shifted_total(xs: &[f32], shift: f32) -> f32 {
    let mut buf = [0f32; 256];
    xs.chunks(256)
        .map(|c| {
            let b = &mut buf[..c.len()];
            b.copy_from_slice(c);
            exp_shifted_sum(b, shift)
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LN2, POLY, X_MAX, X_MIN};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let x = _mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s);
            let e = exp16(x);
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm512_add_ps(acc, e);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for v in chunks.into_remainder() {
            *v = (*v - shift).exp();
            sum += *v;
        }
        sum
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(X_MIN)),
            _mm512_set1_ps(X_MAX),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2[0]), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2[1]), r);
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LN2, POLY, X_MAX, X_MIN};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let x = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s);
            let e = exp8(x);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), half);
        let mut sum = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
        for v in chunks.into_remainder() {
            *v = (*v - shift).exp();
            sum += *v;
        }
        sum
    }

    /// 2^n for integral n in [-126, 127], built in the exponent field.
    #[target_feature(enable = "avx2")]
    unsafe fn pow2(n: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        // The AVX-512 kernel's steps, lane for lane.
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(X_MIN)),
            _mm256_set1_ps(X_MAX),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2[0]), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2[1]), r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // n lies in [-126, 128]: 2^n as 2^(n >> 1) * 2^(n - (n >> 1)), each factor a normal float.
        let n = _mm256_cvtps_epi32(n);
        let lo = _mm256_srai_epi32::<1>(n);
        let hi = _mm256_sub_epi32(n, lo);
        _mm256_mul_ps(_mm256_mul_ps(e, pow2(lo)), pow2(hi))
    }
}

#[cfg(test)]
mod tests {
    use super::exp_shifted_sum;

    /// The vector paths (whichever this CPU runs) against `f32::exp`, over the whole range the
    /// kernels clamp to, its edges and a tail that is not a multiple of the lanes.
    #[test]
    fn exp_matches_libm_within_a_few_ulp() {
        let mut xs: Vec<f32> = (0..20_003)
            .map(|i| -87.3 + 176.0 * i as f32 / 20_003.0)
            .collect();
        xs.extend([-87.3, -87.0, -1e-8, 0.0, 1e-8, 0.5, 88.0, 88.7, 88.6]);
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        let mut got = xs.clone();
        exp_shifted_sum(&mut got, 0.0);
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            let ulp = (g.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(ulp <= 3, "exp({x}) = {g}, libm {w} ({ulp} ulp)");
        }
        // The sum it returns (over values whose sum is finite).
        let mut zs: Vec<f32> = (0..1001).map(|i| -20.0 + 0.04 * i as f32).collect();
        let total: f64 = zs.iter().map(|&z| (z as f64).exp()).sum();
        let sum = exp_shifted_sum(&mut zs, 0.0);
        assert!(
            ((sum as f64) - total).abs() <= 1e-5 * total,
            "sum {sum} vs {total}"
        );
        // A shift: exp(x - 3) over small values, as the softmaxes call it.
        let mut ys = vec![1.0f32, 2.0, 3.0, 2.5, -40.0, 0.0, 1.5, 2.9, 3.0];
        let want: Vec<f32> = ys.iter().map(|y| (y - 3.0).exp()).collect();
        exp_shifted_sum(&mut ys, 3.0);
        for (g, w) in ys.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 4.0 * f32::EPSILON * w.max(f32::MIN_POSITIVE),
                "{g} vs {w}"
            );
        }
    }
}
