//! Block-quantized weights for decoding: each row of a weight (out, in) in blocks of 32 values,
//! multiplied with f32 activations, so the only loss is in the weights. Two formats, GGML's
//! layouts with f32 instead of f16 scales:
//!
//! - [`Format::Q4`] (Q4_1): 16 bytes of 4-bit codes q, a scale d and a minimum m, value = d q + m;
//!   0.75 bytes a value.
//! - [`Format::Q8`] (Q8_0): 32 signed 8-bit codes q and a scale d, value = d q; 1.125 bytes a value.
//!
//! Why: decoding reads every weight once per token and is bound by memory. candle's quantized
//! matmul quantizes the activations to 8 bits too (which flipped close calls of SmolLM2's output
//! projection), and its Q4_1 kernel is scalar. A GGUF file's Q4_1 and Q8_0 tensors come back
//! exactly from their dequantized f32 weights: each Q4_1 block spans its codes' full range (its
//! minimum has code 0, its maximum 15) and each Q8_0 block reaches code +-127 at its largest
//! value, so a block's extremes recover its d (and m), and decoding computes with the file's own
//! weights.

use crate::error::Result;
use candle_core::{DType, Tensor};

/// Values per block.
const QK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4,
    Q8,
}

impl Format {
    /// Bytes of codes per block.
    fn code_bytes(self) -> usize {
        match self {
            Format::Q4 => QK / 2,
            Format::Q8 => QK,
        }
    }
}

/// A weight (rows, cols) in blocks of 32 along its rows.
pub struct BlockWeight {
    format: Format,
    rows: usize,
    cols: usize,
    /// Per block, Q4: 16 bytes, value j < 16 in the low nibble of byte j, value 16 + j in its high
    /// one; Q8: 32 bytes, each an i8.
    codes: Vec<u8>,
    /// Per block: (d, m), m = 0 for Q8.
    scales: Vec<[f32; 2]>,
}

impl BlockWeight {
    /// The quantized copy of w (rows, cols) on the CPU, or None where the rows do not split into
    /// blocks of 32.
    pub fn quantize(w: &Tensor, format: Format) -> Result<Option<Self>> {
        Ok(Self::values(w)?.map(|(data, rows, cols)| Self::of(&data, rows, cols, format)))
    }

    /// w's values and shape, where its rows split into blocks of 32 and it is on the CPU.
    fn values(w: &Tensor) -> Result<Option<(Vec<f32>, usize, usize)>> {
        let (rows, cols) = w.dims2()?;
        if !cols.is_multiple_of(QK) || !w.device().is_cpu() {
            return Ok(None);
        }
        let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some((data, rows, cols)))
    }

    /// The blocks of `data` (rows, cols), cols a multiple of 32.
    fn of(data: &[f32], rows: usize, cols: usize, format: Format) -> Self {
        let blocks = rows * cols / QK;
        let cb = format.code_bytes();
        let mut codes = vec![0u8; blocks * cb];
        let mut scales = Vec::with_capacity(blocks);
        for (b, vals) in data.chunks_exact(QK).enumerate() {
            let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let out = &mut codes[b * cb..][..cb];
            match format {
                Format::Q4 => {
                    let d = (max - min) / 15.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let code = |v: f32| ((v - min) * inv).round().clamp(0.0, 15.0) as u8;
                    for j in 0..QK / 2 {
                        out[j] = code(vals[j]) | (code(vals[j + QK / 2]) << 4);
                    }
                    scales.push([d, min]);
                }
                Format::Q8 => {
                    let d = max.abs().max(min.abs()) / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    for (o, v) in out.iter_mut().zip(vals) {
                        *o = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                    }
                    scales.push([d, 0.0]);
                }
            }
        }
        BlockWeight {
            format,
            rows,
            cols,
            codes,
            scales,
        }
    }

    /// [`BlockWeight::quantize`] where that holds w exactly (to within 1e-6 of its largest value),
    /// as it does a file's blocks of this format, dequantized; None otherwise.
    pub fn quantize_exact(w: &Tensor, format: Format) -> Result<Option<Self>> {
        let Some((data, rows, cols)) = Self::values(w)? else {
            return Ok(None);
        };
        let q = Self::of(&data, rows, cols, format);
        let top = data.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = q
            .dequantize()
            .iter()
            .zip(&data)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        Ok((worst <= 1e-6 * top).then_some(q))
    }

    /// The weight as f32 (rows, cols): what [`BlockWeight::matmul_t`] multiplies with.
    pub fn dequantize(&self) -> Vec<f32> {
        let cb = self.format.code_bytes();
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, [d, m]) in self.scales.iter().enumerate() {
            let q = &self.codes[b * cb..][..cb];
            match self.format {
                Format::Q4 => {
                    out.extend(q.iter().map(|c| d * (c & 15) as f32 + m));
                    out.extend(q.iter().map(|c| d * (c >> 4) as f32 + m));
                }
                Format::Q8 => out.extend(q.iter().map(|&c| d * c as i8 as f32)),
            }
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
                "quantized weight of {k} inputs for rows of {:?}",
                x.dims()
            )));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let r = xs.len() / k;
        // Per row of x, the sum of each block of 32 values (for Q4's minimum term).
        let sums: Vec<f32> = xs.chunks_exact(QK).map(|c| c.iter().sum()).collect();
        let n = self.rows;
        // out is (n, r), row j holding output column j for every row of x; transposed at the end.
        let out = super::parallel::filled(n * r, 64 * r, |ci, chunk| {
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
        let (nb, cb) = (self.cols / QK, self.format.code_bytes());
        let codes = &self.codes[j * nb * cb..][..nb * cb];
        let scales = &self.scales[j * nb..][..nb];
        #[cfg(target_arch = "x86_64")]
        if super::features::avx512() {
            // SAFETY: avx512f is available; the slices hold nb blocks and o.len() rows of nb
            // blocks.
            unsafe { avx512::row_dot(self.format, codes, scales, xs, sums, o) };
            return;
        }
        for (i, oi) in o.iter_mut().enumerate() {
            let (x, s) = (&xs[i * self.cols..][..self.cols], &sums[i * nb..][..nb]);
            let mut acc = 0f32;
            for (b, [d, m]) in scales.iter().enumerate() {
                let (q, xb) = (&codes[b * cb..][..cb], &x[b * QK..][..QK]);
                let dot: f32 = match self.format {
                    Format::Q4 => (0..QK / 2)
                        .map(|t| (q[t] & 15) as f32 * xb[t] + (q[t] >> 4) as f32 * xb[t + QK / 2])
                        .sum(),
                    Format::Q8 => q.iter().zip(xb).map(|(&c, v)| c as i8 as f32 * v).sum(),
                };
                acc += d * dot + m * s[b];
            }
            *oi = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Format, QK};
    use std::arch::x86_64::*;

    /// The 32 values of block b as two vectors of 16 (codes only: d q for Q8, q for Q4).
    ///
    /// # Safety
    /// avx512f is available; `codes` holds block b.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(format: Format, codes: &[u8], b: usize) -> (__m512, __m512) {
        match format {
            Format::Q4 => {
                let low = _mm_set1_epi8(15);
                let q = _mm_loadu_si128(codes.as_ptr().add(b * QK / 2) as *const __m128i);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, low))),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
                )
            }
            Format::Q8 => {
                let q = codes.as_ptr().add(b * QK) as *const __m128i;
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(1)))),
                )
            }
        }
    }

    /// See `BlockWeight::row_dot`.
    ///
    /// # Safety
    /// avx512f is available; `codes` and `scales` hold nb blocks of `format`, `xs` and `sums`
    /// o.len() rows of nb blocks (nb = scales.len()).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_dot(
        format: Format,
        codes: &[u8],
        scales: &[[f32; 2]],
        xs: &[f32],
        sums: &[f32],
        o: &mut [f32],
    ) {
        let nb = scales.len();
        let cols = nb * QK;
        for (i, oi) in o.iter_mut().enumerate() {
            let x = xs.as_ptr().add(i * cols);
            let mut acc = _mm512_setzero_ps();
            let mut mins = 0f32;
            for (b, [d, m]) in scales.iter().enumerate() {
                let (lo, hi) = block(format, codes, b);
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
