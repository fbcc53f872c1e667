//! 4-bit weight blocks times 8-bit activations, as llama.cpp multiplies a Q4_1 weight: each row of
//! activations is quantized per block of 32 (llama.cpp's Q8_1: a scale dx = max|x| / 127, codes
//! round(x / dx), and dx times their sum), and a block's dot product is one integer multiply-add of
//! 32 byte pairs (`vpmaddubsw` on AVX2), d dx sum(q qx) + m dx sum(qx). The weight is read as it lies
//! and the arithmetic is a quarter of the f32 path's.

use super::blockq::{f16_at, Format, QK};

/// Rows of activations in 8-bit blocks.
pub(super) struct Int8Rows {
    /// Per block, 32 codes.
    codes: Vec<i8>,
    /// Per block, (dx, dx * sum of its codes).
    scales: Vec<[f32; 2]>,
}

impl Int8Rows {
    /// xs (rows * cols, cols a multiple of 32) quantized per block of 32.
    pub(super) fn of(xs: &[f32]) -> Self {
        let mut codes = vec![0i8; xs.len()];
        let mut scales = Vec::with_capacity(xs.len() / QK);
        for (vals, out) in xs.chunks_exact(QK).zip(codes.chunks_exact_mut(QK)) {
            let top = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dx = top / 127.0;
            let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            let mut sum = 0i32;
            for (o, v) in out.iter_mut().zip(vals) {
                *o = (v * inv).round() as i8;
                sum += *o as i32;
            }
            scales.push([dx, dx * sum as f32]);
        }
        Int8Rows { codes, scales }
    }
}

/// o[i] = one weight row of Q4 blocks (GGML's Q4_1 layout, see `blockq`) . row i of x.
pub(super) fn row_dot_q4(row: &[u8], x: &Int8Rows, o: &mut [f32]) {
    const BB: usize = Format::Q4.block_bytes();
    let nb = row.len() / BB;
    assert!(x.scales.len() >= o.len() * nb && x.codes.len() >= o.len() * nb * QK);
    #[cfg(target_arch = "x86_64")]
    if super::blockq_x86::avx2() {
        for (g, og) in o.chunks_mut(ROWS).enumerate() {
            let first = g * ROWS * nb;
            let rows = (&x.codes[first * QK..], &x.scales[first..]);
            // SAFETY: AVX2, FMA and F16C are available; og.len() <= ROWS rows of nb blocks follow
            // in `rows` (checked above).
            unsafe {
                match og.len() {
                    1 => avx2::row_dot_q4::<1>(row, rows, og),
                    2 => avx2::row_dot_q4::<2>(row, rows, og),
                    3 => avx2::row_dot_q4::<3>(row, rows, og),
                    _ => avx2::row_dot_q4::<ROWS>(row, rows, og),
                }
            }
        }
        return;
    }
    for (i, oi) in o.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(BB).enumerate() {
            let q = &blk[4..];
            let xq = &x.codes[(i * nb + b) * QK..][..QK];
            let dot: i32 = (0..QK / 2)
                .map(|t| (q[t] & 15) as i32 * xq[t] as i32 + (q[t] >> 4) as i32 * xq[t + 16] as i32)
                .sum();
            let [dx, sx] = x.scales[i * nb + b];
            acc += f16_at(blk, 0) * dx * dot as f32 + f16_at(blk, 2) * sx;
        }
        *oi = acc;
    }
}

#[cfg(target_arch = "x86_64")]
use super::blockq_x86::ROWS;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Format, QK};
    use crate::kernels::cpu::blockq_x86::sum_lanes;
    use std::arch::x86_64::*;

    /// `super::row_dot_q4` for R rows of x, given as (codes, scales) from its first.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `row` holds whole Q4 blocks (nb of them), `x` R rows of
    /// nb blocks, o.len() == R.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_dot_q4<const R: usize>(
        row: &[u8],
        (xq, xs): (&[i8], &[[f32; 2]]),
        o: &mut [f32],
    ) {
        const BB: usize = Format::Q4.block_bytes();
        let nb = row.len() / BB;
        let (low, ones) = (_mm_set1_epi8(15), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        for b in 0..nb {
            let p = row.as_ptr().add(b * BB);
            // d and m, the block's two f16s, as lanes 0 and 1.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let q = _mm_loadu_si128(p.add(4) as *const __m128i);
            // Values 0..16 in the low lane, 16..32 in the high one: x's order.
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
            let w = _mm256_set_m128i(hi, _mm_and_si128(q, low));
            for i in 0..R {
                let xb = _mm256_loadu_si256(xq.as_ptr().add((i * nb + b) * QK) as *const __m256i);
                // u8 * i8 pairs summed to i16 (at most 2 * 15 * 127), then pairs of those to i32.
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xb), ones);
                let [dx, sx] = xs[i * nb + b];
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(dot), acc[i]);
                mins[i] += m * sx;
            }
        }
        for i in 0..R {
            o[i] = sum_lanes(acc[i]) + mins[i];
        }
    }
}
