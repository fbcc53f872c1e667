//! A single-precision GEMM for CPUs with AVX-512: BLIS's loop structure (pack a KC x NC panel of B,
//! pack MC x KC blocks of A, run an MR x NR register-tile kernel over them), MC blocks split over
//! the cores. The `gemm` crate's kernels are AVX2 (AVX-512 needs a nightly compiler there) and
//! reach about half of a Zen 4 core's fp32 peak; this one is the reason `matmul` checks for
//! `avx512f` first.
//!
//! dst (m x n, row stride `dst_rs`) = [dst +] scale * A (m x k) * B (k x n), A and B strided views.

use super::gemm::View;
use super::SharedMut;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of the register tile (one broadcast of A each).
const MR: usize = 12;
/// Columns of the register tile: two 16-lane vectors.
const NR: usize = 32;
const KC: usize = 384;
const MC: usize = 120;
const NC: usize = 4096;

thread_local! {
    static B_PACK: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static A_PACK: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A packing buffer borrowed from the thread's cache and given back on drop: packing buffers are
/// megabytes, and allocating (and zeroing) them on every product showed in profiles. Packing
/// writes every element it later reads, so reused contents never leak into results. (A buffer
/// taken while the thread's is out, which rayon's work stealing can cause, is a fresh one.)
struct Scratch(
    Vec<f32>,
    &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
);

impl Scratch {
    fn take(key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>, len: usize) -> Self {
        let mut v = key.with(|c| c.take());
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Scratch(v, key)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        self.1.with(|c| {
            // Keep the larger of the two if a nested take left one behind.
            let old = c.take();
            c.set(if old.len() > v.len() { old } else { v });
        });
    }
}

/// Whether this CPU runs [`sgemm`].
pub fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && std::env::var_os("CHATFORGE_NO_AVX512").is_none()
    })
}

/// B (kc x nc) from (p0, j0) into NR-wide column panels, each kc x NR row-major, zero-padded;
/// panels split over the cores when `parallel`.
fn pack_b(b: &View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32], parallel: bool) {
    let out = &mut out[..nc.div_ceil(NR) * kc * NR];
    let one = |(panel, dst): (usize, &mut [f32])| {
        let jp = panel * NR;
        let w = NR.min(nc - jp);
        if b.rs == 1 && b.cs != 1 {
            // Column-major B (a transposed weight): read each column contiguously.
            for j in 0..w {
                let src = &b.data[(j0 + jp + j) * b.cs + p0..][..kc];
                for (p, &x) in src.iter().enumerate() {
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
    if parallel {
        out.par_chunks_mut(kc * NR).enumerate().for_each(one);
    } else {
        out.chunks_mut(kc * NR).enumerate().for_each(one);
    }
}

/// A (mc x kc) from (i0, p0) into MR-tall row panels, each kc x MR (column of MR per k), padded.
fn pack_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
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

/// The MR x NR tile: acc = sum over kc of A-panel column x B-panel row; then
/// c = (accumulate ? c : 0) + scale * acc for the valid `rows` x `cols` corner.
///
/// # Safety
/// avx512f is available; `a` holds kc * MR and `b` kc * NR floats; c + i * ldc + j is writable for
/// i < rows, j < cols.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    scale: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let ap = a.add(p * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    let s = _mm512_set1_ps(scale);
    if rows == MR && cols == NR {
        for (r, row) in acc.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                let dst = c.add(r * ldc + 16 * h);
                let mut out = _mm512_mul_ps(*v, s);
                if accumulate {
                    out = _mm512_add_ps(out, _mm512_loadu_ps(dst));
                }
                _mm512_storeu_ps(dst, out);
            }
        }
    } else {
        let mut tile = [0f32; MR * NR];
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), row[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), row[1]);
        }
        for r in 0..rows {
            for j in 0..cols {
                let dst = c.add(r * ldc + j);
                let v = scale * tile[r * NR + j];
                *dst = if accumulate { *dst + v } else { v };
            }
        }
    }
}

/// See the module documentation.
///
/// # Safety
/// [`available`] is true; `dst + i * dst_rs + j` is writable for i < m, j < n and touched by no other
/// thread; `a` and `b` hold the m x k and k x n views (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
    threads: usize,
) {
    {
        let out = SharedMut(dst);
        // Blocks of A rows: at most MC, and as many as a multiple of the threads so that no core
        // waits for another's last block.
        let blocks = m.div_ceil(MC).div_ceil(threads) * threads;
        let mc = m.div_ceil(blocks).next_multiple_of(MR).min(MC);
        let mut bpack = Scratch::take(&B_PACK, KC * NC.min(n.div_ceil(NR) * NR));
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let acc = accumulate || p0 > 0;
                pack_b(&b, p0, kc, j0, nc, &mut bpack.0, threads > 1);
                let bp = &bpack.0;
                let block = |i0: usize| {
                    let mut apack = Scratch::take(&A_PACK, MC * KC);
                    let apack = &mut apack.0;
                    let mc = mc.min(m - i0);
                    pack_a(&a, i0, mc, p0, kc, apack);
                    for (jp, jr) in (0..nc).step_by(NR).enumerate() {
                        for (ip, ir) in (0..mc).step_by(MR).enumerate() {
                            // SAFETY: rows i0+ir.., columns j0+jr.. of dst, inside the m x n
                            // destination; the MC blocks of different tasks are disjoint; the
                            // packed panels hold kc * MR and kc * NR floats.
                            unsafe {
                                kernel(
                                    kc,
                                    apack.as_ptr().add(ip * kc * MR),
                                    bp.as_ptr().add(jp * kc * NR),
                                    out.at((i0 + ir) * dst_rs + j0 + jr),
                                    dst_rs,
                                    MR.min(mc - ir),
                                    NR.min(nc - jr),
                                    acc,
                                    scale,
                                )
                            };
                        }
                    }
                };
                let starts: Vec<usize> = (0..m).step_by(mc).collect();
                if threads > 1 && starts.len() > 1 {
                    starts.par_iter().for_each(|&i0| block(i0));
                } else {
                    starts.iter().for_each(|&i0| block(i0));
                }
            }
        }
    }
}
