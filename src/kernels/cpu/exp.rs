//! exp over a slice, 16 lanes at a time with AVX-512 (libm's `expf` is one value per call and was
//! 8% of a training step, inside the softmaxes): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a
//! degree-6 polynomial (Cephes' `expf` coefficients, within 2 ulp), then scaled by 2^n with
//! `vscalefps`. Elsewhere, and for the tail, the scalar `exp`.

/// xs[i] = exp(xs[i] - shift); returns the sum of the results.
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: avx512f is available.
        return unsafe { avx512::exp_shifted_sum(xs, shift) };
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
        // Below -87.3 the result is 0 (or denormal); above 88.7 it overflows: clamp.
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
            _mm512_set1_ps(88.7),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - n ln2, ln2 split in two for precision.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }
}
