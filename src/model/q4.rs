//! 4-bit weights for decoding: each row of a weight (out, in) in blocks of 32 values, a block
//! holding 16 bytes of 4-bit codes q and an f32 scale d and minimum m, value = d q + m (GGML's Q4_1
//! layout, with f32 instead of f16 for d and m). Multiplied with f32 activations, so the only loss
//! is in the weights.
//!
//! Why: decoding reads every weight once per token and is bound by memory; at 0.75 bytes a value
//! this reads 30% fewer bytes than candle's Q8_0 (1.06), and candle's own Q4_1 kernel is scalar.
//! A GGUF file stored in Q4_1 comes back exactly: each of its dequantized blocks spans its codes'
//! full range (the minimum has code 0, the maximum code 15), so the minimum and (max - min) / 15
//! recover the block's m and d, and decoding computes with the file's own weights.

use crate::error::Result;
use candle_core::{DType, Tensor};

/// Values per block.
const QK: usize = 32;

/// A weight (rows, cols) in 4-bit blocks along its rows.
pub struct Q4Weight {
    rows: usize,
    cols: usize,
    /// Per block, 16 bytes: value j < 16 in the low nibble of byte j, value 16 + j in its high one.
    codes: Vec<u8>,
    /// Per block: (d, m).
    scales: Vec<[f32; 2]>,
}

impl Q4Weight {
    /// The 4-bit copy of w (rows, cols) on the CPU, or None where the rows do not split into
    /// blocks of 32.
    pub fn quantize(w: &Tensor) -> Result<Option<Self>> {
        let (rows, cols) = w.dims2()?;
        if !cols.is_multiple_of(QK) || !w.device().is_cpu() {
            return Ok(None);
        }
        let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let blocks = rows * cols / QK;
        let mut codes = vec![0u8; blocks * QK / 2];
        let mut scales = Vec::with_capacity(blocks);
        for (b, vals) in data.chunks_exact(QK).enumerate() {
            let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let code = |v: f32| ((v - min) * inv).round().clamp(0.0, 15.0) as u8;
            for j in 0..QK / 2 {
                codes[b * QK / 2 + j] = code(vals[j]) | (code(vals[j + QK / 2]) << 4);
            }
            scales.push([d, min]);
        }
        Ok(Some(Q4Weight {
            rows,
            cols,
            codes,
            scales,
        }))
    }

    /// The weight as f32 (rows, cols): what [`Q4Weight::matmul_t`] multiplies with.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, [d, m]) in self.scales.iter().enumerate() {
            let q = &self.codes[b * QK / 2..][..QK / 2];
            out.extend(q.iter().map(|c| d * (c & 15) as f32 + m));
            out.extend(q.iter().map(|c| d * (c >> 4) as f32 + m));
        }
        out
    }

    /// x (..., cols) f32 times the weight's transpose -> (..., rows) f32, for a few rows of x
    /// (decoding): the output rows split over the cores, each weight row read from memory once for
    /// all rows of x (it stays in cache between them).
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.cols;
        if x.dims().last() != Some(&k) {
            return Err(crate::error::Error::Mismatch(format!(
                "4-bit weight of {} inputs for rows of {:?}",
                k,
                x.dims()
            )));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let r = xs.len() / k;
        // Per row of x, the sum of each block of 32 values (for the minimum's term).
        let sums: Vec<f32> = xs.chunks_exact(QK).map(|c| c.iter().sum()).collect();
        let n = self.rows;
        // out is (n, r), row j holding output column j for every row of x; transposed at the end.
        let out = crate::model::fused::filled(n * r, 64 * r, |ci, chunk| {
            for (jj, o) in chunk.chunks_exact_mut(r).enumerate() {
                self.row_dot(ci * 64 + jj, &xs, &sums, o);
            }
        });
        let mut y = vec![0f32; r * n];
        for (j, o) in out.chunks_exact(r).enumerate() {
            for (i, v) in o.iter().enumerate() {
                y[i * n + j] = *v;
            }
        }
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("checked above") = n;
        Ok(Tensor::from_vec(y, dims, x.device())?)
    }

    /// o[i] = row j of the weight . row i of x, for every row i of xs.
    fn row_dot(&self, j: usize, xs: &[f32], sums: &[f32], o: &mut [f32]) {
        let nb = self.cols / QK;
        let codes = &self.codes[j * nb * QK / 2..][..nb * QK / 2];
        let scales = &self.scales[j * nb..][..nb];
        #[cfg(target_arch = "x86_64")]
        if crate::model::fused::avx512() {
            // SAFETY: avx512f is available; the slices hold nb blocks and r rows of nb blocks.
            unsafe { avx512::row_dot(codes, scales, xs, sums, o) };
            return;
        }
        for (i, oi) in o.iter_mut().enumerate() {
            let (x, s) = (&xs[i * self.cols..][..self.cols], &sums[i * nb..][..nb]);
            let mut acc = 0f32;
            for (b, [d, m]) in scales.iter().enumerate() {
                let (q, xb) = (&codes[b * QK / 2..][..QK / 2], &x[b * QK..][..QK]);
                let dot: f32 = (0..QK / 2)
                    .map(|t| (q[t] & 15) as f32 * xb[t] + (q[t] >> 4) as f32 * xb[t + QK / 2])
                    .sum();
                acc += d * dot + m * s[b];
            }
            *oi = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::QK;
    use std::arch::x86_64::*;

    /// See `Q4Weight::row_dot`.
    ///
    /// # Safety
    /// avx512f is available; `codes` and `scales` hold nb blocks, `xs` and `sums` o.len() rows of
    /// nb blocks (nb = scales.len()).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_dot(
        codes: &[u8],
        scales: &[[f32; 2]],
        xs: &[f32],
        sums: &[f32],
        o: &mut [f32],
    ) {
        let nb = scales.len();
        let cols = nb * QK;
        let low = _mm_set1_epi8(15);
        for (i, oi) in o.iter_mut().enumerate() {
            let x = xs.as_ptr().add(i * cols);
            let mut acc = _mm512_setzero_ps();
            let mut mins = 0f32;
            for (b, [d, m]) in scales.iter().enumerate() {
                let q = _mm_loadu_si128(codes.as_ptr().add(b * QK / 2) as *const __m128i);
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, low)));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                    _mm_srli_epi16::<4>(q),
                    low,
                )));
                let xb = x.add(b * QK);
                let dot = _mm512_fmadd_ps(
                    hi,
                    _mm512_loadu_ps(xb.add(16)),
                    _mm512_mul_ps(lo, _mm512_loadu_ps(xb)),
                );
                acc = _mm512_fmadd_ps(_mm512_set1_ps(*d), dot, acc);
                mins += m * sums[i * nb + b];
            }
            *oi = _mm512_reduce_add_ps(acc) + mins;
        }
    }
}
