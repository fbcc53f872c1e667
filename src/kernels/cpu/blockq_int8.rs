//! The block formats (GGML's Q4_1 and Q8_0 layouts, see `blockq`) and their products with 8-bit
//! activations, as llama.cpp multiplies Q4_1 and Q8_0 weights on the
//! CPU: each row of activations is quantized per block of 32 (llama.cpp's Q8_1 and Q8_0: a scale
//! dx = max|x| / 127 kept in f16, codes round(x / dx), and for Q8_1 dx times their sum), and a
//! block's dot product is one integer multiply-add of 32 byte pairs (`vpmaddubsw` on AVX2):
//! Q4_1: d dx sum(q qx) + m dx sum(qx); Q8_0: d dx sum(q qx). The weight is read as it lies and
//! the arithmetic is a quarter of an f32 product's.

use half::f16;

/// Values per block.
pub(super) const QK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4,
    Q8,
}

impl Format {
    /// Bytes per block: the f16 scales, then the codes.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Q4 => 4 + QK / 2,
            Format::Q8 => 2 + QK,
        }
    }
}

/// The f16 at bytes i, i + 1 of b, as f32.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Rows of activations in 8-bit blocks.
pub(super) struct Int8Rows {
    /// Per block, 32 codes.
    codes: Vec<i8>,
    /// Per block, (dx, dx * sum of its codes), each rounded to f16 as llama.cpp stores them.
    scales: Vec<[f32; 2]>,
}

impl Int8Rows {
    /// xs (rows * cols, cols a multiple of 32) quantized per block of 32.
    pub(super) fn of(xs: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::features::avx2_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { Self::of_avx2(xs) };
        }
        Self::of_portable(xs)
    }

    /// [`Int8Rows::of`] compiled for AVX2, where the rounding vectorises.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn of_avx2(xs: &[f32]) -> Self {
        Self::of_portable(xs)
    }

    #[inline(always)]
    fn of_portable(xs: &[f32]) -> Self {
        let mut codes = vec![0i8; xs.len()];
        let mut scales = Vec::with_capacity(xs.len() / QK);
        let half = |v: f32| f16::from_f32(v).to_f32();
        for (vals, out) in xs.chunks_exact(QK).zip(codes.chunks_exact_mut(QK)) {
            let top = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dx = top / 127.0;
            let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            for (o, v) in out.iter_mut().zip(vals) {
                *o = (v * inv).round_ties_even() as i8;
            }
            let sum: i32 = out.iter().map(|&c| c as i32).sum();
            scales.push([half(dx), half(dx * sum as f32)]);
        }
        Int8Rows { codes, scales }
    }
}

/// o[i] = one weight row of `format` blocks (GGML's layout, see `blockq`) . row i of x.
pub(super) fn row_dot(format: Format, row: &[u8], x: &Int8Rows, o: &mut [f32]) {
    let nb = row.len() / format.block_bytes();
    assert!(x.scales.len() >= o.len() * nb && x.codes.len() >= o.len() * nb * QK);
    #[cfg(target_arch = "x86_64")]
    if super::features::avx2_f16c() {
        // Groups of 8, 4, 2 and 1 rows, each one kernel call with its accumulators in registers.
        let mut first = 0;
        while first < o.len() {
            let r = [8, 4, 2, 1]
                .into_iter()
                .find(|&r| r <= o.len() - first)
                .unwrap_or(1);
            let rows = (&x.codes[first * nb * QK..], &x.scales[first * nb..]);
            let og = &mut o[first..first + r];
            // SAFETY: AVX2, FMA and F16C are available; og.len() == R rows of nb blocks follow
            // in `rows` (checked above).
            unsafe {
                use avx2::row_dot as f;
                match (format, r) {
                    (Format::Q4, 8) => f::<true, 8>(row, rows, og),
                    (Format::Q4, 4) => f::<true, 4>(row, rows, og),
                    (Format::Q4, 2) => f::<true, 2>(row, rows, og),
                    (Format::Q4, _) => f::<true, 1>(row, rows, og),
                    (Format::Q8, 8) => f::<false, 8>(row, rows, og),
                    (Format::Q8, 4) => f::<false, 4>(row, rows, og),
                    (Format::Q8, 2) => f::<false, 2>(row, rows, og),
                    (Format::Q8, _) => f::<false, 1>(row, rows, og),
                }
            }
            first += r;
        }
        return;
    }
    for (i, oi) in o.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(format.block_bytes()).enumerate() {
            let xq = &x.codes[(i * nb + b) * QK..][..QK];
            let [dx, sx] = x.scales[i * nb + b];
            acc += match format {
                Format::Q4 => {
                    let q = &blk[4..];
                    let dot: i32 = (0..QK / 2)
                        .map(|t| {
                            (q[t] & 15) as i32 * xq[t] as i32
                                + (q[t] >> 4) as i32 * xq[t + 16] as i32
                        })
                        .sum();
                    f16_at(blk, 0) * dx * dot as f32 + f16_at(blk, 2) * sx
                }
                Format::Q8 => {
                    let dot: i32 = blk[2..]
                        .iter()
                        .zip(xq)
                        .map(|(&q, &v)| q as i8 as i32 * v as i32)
                        .sum();
                    f16_at(blk, 0) * dx * dot as f32
                }
            };
        }
        *oi = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Format, QK};
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum_lanes(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// `super::row_dot` for R rows of x, given as (codes, scales) from its first; Q4_1 blocks if
    /// Q4, else Q8_0.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `row` holds whole blocks of that format (nb of them),
    /// `x` R rows of nb blocks, o.len() == R.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_dot<const Q4: bool, const R: usize>(
        row: &[u8],
        (xq, xs): (&[i8], &[[f32; 2]]),
        o: &mut [f32],
    ) {
        let bb = if Q4 { Format::Q4 } else { Format::Q8 }.block_bytes();
        let nb = row.len() / bb;
        let (low, ones) = (_mm_set1_epi8(15), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        for b in 0..nb {
            let p = row.as_ptr().add(b * bb);
            // The block's f16 scales (d, and m for Q4_1) as lanes 0 and 1.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            // The codes as unsigned bytes; Q8_0's signs go onto x's codes instead.
            let (w, sign) = if Q4 {
                let q = _mm_loadu_si128(p.add(4) as *const __m128i);
                // Values 0..16 in the low lane, 16..32 in the high one: x's order.
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
                (_mm256_set_m128i(hi, _mm_and_si128(q, low)), None)
            } else {
                let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
                (_mm256_sign_epi8(q, q), Some(q))
            };
            for i in 0..R {
                let mut xb =
                    _mm256_loadu_si256(xq.as_ptr().add((i * nb + b) * QK) as *const __m256i);
                if let Some(q) = sign {
                    xb = _mm256_sign_epi8(xb, q);
                }
                // u8 * i8 pairs summed to i16 (at most 2 * 127 * 127), then pairs of those to i32.
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xb), ones);
                let [dx, sx] = xs[i * nb + b];
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(dot), acc[i]);
                if Q4 {
                    mins[i] += m * sx;
                }
            }
        }
        for i in 0..R {
            o[i] = sum_lanes(acc[i]) + mins[i];
        }
    }
}
