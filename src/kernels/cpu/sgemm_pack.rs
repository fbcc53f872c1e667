//! Packing for the AVX-512 GEMM (`sgemm`): B into NR-wide column panels and A into MR-tall row
//! panels, the layouts its register-tile kernel reads, transposing through 16 x 16 register
//! transposes where the source is strided the other way.

use super::parallel::for_each_chunk_mut;
use super::view::View;
use std::arch::x86_64::*;

/// Rows of the register tile (one broadcast of A each).
pub(super) const MR: usize = 12;
/// Columns of the register tile: two 16-lane vectors.
pub(super) const NR: usize = 32;

/// B (kc x nc) from (p0, j0) into NR-wide column panels, each kc x NR row-major, zero-padded;
/// panels split over the cores (one thread inside a parallel task).
pub(super) fn pack_b(b: &View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
    let out = &mut out[..nc.div_ceil(NR) * kc * NR];
    let one = |panel: usize, dst: &mut [f32]| {
        let jp = panel * NR;
        let w = NR.min(nc - jp);
        if b.rs == 1 && b.cs != 1 {
            // Column-major B (a transposed weight): 16 x 16 blocks transposed in registers, the
            // ragged rest element by element, each column read contiguously.
            let (w16, kc16) = (w - w % 16, kc - kc % 16);
            for jh in (0..w16).step_by(16) {
                let src = &b.data[(j0 + jp + jh) * b.cs + p0..];
                for p in (0..kc16).step_by(16) {
                    // SAFETY: 16 columns of B (stride cs) from row p0 + p, inside the view
                    // (checked by the caller); 16 rows of the panel (stride NR) from column jh.
                    unsafe {
                        assert!(
                            15 * b.cs + p + 16 <= src.len() && (p + 15) * NR + jh + 16 <= dst.len()
                        );
                        transpose16(
                            src.as_ptr().add(p),
                            b.cs,
                            dst.as_mut_ptr().add(p * NR + jh),
                            NR,
                        );
                    }
                }
            }
            for j in 0..w {
                let src = &b.data[(j0 + jp + j) * b.cs + p0..][..kc];
                let from = if j < w16 { kc16 } else { 0 };
                for (p, &x) in src.iter().enumerate().skip(from) {
                    dst[p * NR + j] = x;
                }
            }
        } else {
            for p in 0..kc {
                let base = (p0 + p) * b.rs + (j0 + jp) * b.cs;
                let row = &mut dst[p * NR..p * NR + w];
                if b.cs == 1 {
                    row.copy_from_slice(&b.data[base..base + w]);
                } else {
                    for (j, r) in row.iter_mut().enumerate() {
                        *r = b.data[base + j * b.cs];
                    }
                }
            }
        }
        if w < NR {
            for p in 0..kc {
                dst[p * NR + w..(p + 1) * NR].fill(0.0);
            }
        }
    };
    for_each_chunk_mut(out, kc * NR, one);
}

/// dst[j * ds + i] = src[i * ss + j] for i, j < 16: a 16 x 16 block transposed through registers
/// (interleave pairs of rows, then pairs of pairs, then 128-bit lanes).
///
/// # Safety
/// AVX-512 is available ([`available`]); src + i * ss + j is readable and dst + j * ds + i
/// writable for i, j < 16.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * ss)));
    // Rows 2k, 2k+1 interleaved: lo holds columns 4l, 4l+1 of lane l, hi columns 4l+2, 4l+3.
    let lo: [__m512; 8] = std::array::from_fn(|k| _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]));
    let hi: [__m512; 8] = std::array::from_fn(|k| _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]));
    // d[g][e], lane l: column 4l + e of rows 4g..4g+4.
    let pd = _mm512_castps_pd;
    let d: [[__m512; 4]; 4] = std::array::from_fn(|g| {
        let (a, b, c, e) = (
            pd(lo[2 * g]),
            pd(lo[2 * g + 1]),
            pd(hi[2 * g]),
            pd(hi[2 * g + 1]),
        );
        [
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpacklo_pd(c, e)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(c, e)),
        ]
    });
    for (e, c) in (0..4).map(|e| (e, [d[0][e], d[1][e], d[2][e], d[3][e]])) {
        let u0 = _mm512_shuffle_f32x4::<0x44>(c[0], c[1]);
        let u1 = _mm512_shuffle_f32x4::<0xEE>(c[0], c[1]);
        let v0 = _mm512_shuffle_f32x4::<0x44>(c[2], c[3]);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(c[2], c[3]);
        _mm512_storeu_ps(dst.add(e * ds), _mm512_shuffle_f32x4::<0x88>(u0, v0));
        _mm512_storeu_ps(dst.add((4 + e) * ds), _mm512_shuffle_f32x4::<0xDD>(u0, v0));
        _mm512_storeu_ps(dst.add((8 + e) * ds), _mm512_shuffle_f32x4::<0x88>(u1, v1));
        _mm512_storeu_ps(dst.add((12 + e) * ds), _mm512_shuffle_f32x4::<0xDD>(u1, v1));
    }
}

/// A (mc x kc) from (i0, p0) into MR-tall row panels, each kc x MR (column of MR per k), padded.
pub(super) fn pack_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    if a.rs == 1 && a.cs != 1 {
        // Column-major A (a transposed activation): walk each source column once, contiguously,
        // dealing its MR-row pieces out to the panels (panel by panel, the walk strode across
        // pages).
        for p in 0..kc {
            let src = &a.data[i0 + (p0 + p) * a.cs..][..mc];
            let pieces = src.chunks_exact(MR);
            let (rest, full) = (pieces.remainder(), pieces.len());
            for (panel, piece) in pieces.enumerate() {
                out[(panel * kc + p) * MR..][..MR].copy_from_slice(piece);
            }
            if !rest.is_empty() {
                let dst = &mut out[(full * kc + p) * MR..][..MR];
                dst[..rest.len()].copy_from_slice(rest);
                dst[rest.len()..].fill(0.0);
            }
        }
        return;
    }
    for (panel, ip) in (0..mc).step_by(MR).enumerate() {
        let h = MR.min(mc - ip);
        let dst = &mut out[panel * kc * MR..(panel + 1) * kc * MR];
        if a.cs == 1 {
            // Row-major A: read each row contiguously, write it down the panel's column.
            for i in 0..h {
                let src = &a.data[(i0 + ip + i) * a.rs + p0..][..kc];
                for (p, &x) in src.iter().enumerate() {
                    dst[p * MR + i] = x;
                }
            }
        } else {
            for p in 0..kc {
                let base = (i0 + ip) * a.rs + (p0 + p) * a.cs;
                for (i, c) in dst[p * MR..p * MR + h].iter_mut().enumerate() {
                    *c = a.data[base + i * a.rs];
                }
            }
        }
        if h < MR {
            for p in 0..kc {
                dst[p * MR + h..(p + 1) * MR].fill(0.0);
            }
        }
    }
}
