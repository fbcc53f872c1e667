//! A single-precision GEMM for CPUs with AVX-512: BLIS's loop structure (pack a KC x NC panel of B,
//! then run an MR x NR register-tile kernel over MC x KC blocks of A), MC blocks split over the
//! cores. Row-major A is read in place (its rows broadcast straight from the source); other
//! layouts of A are packed. Transposing packs go through 16 x 16 register transposes, and the
//! kernel's loop is assembly so that its 24 accumulators stay in registers. The `gemm` crate's
//! kernels are AVX2 (AVX-512 needs a nightly compiler there) and reach about half of a core's
//! fp32 peak; this one is the reason `matmul` checks for `avx512f` first.
//!
//! dst (m x n, row stride `dst_rs`) = [dst +] scale * A (m x k) * B (k x n), A and B strided views.

use super::parallel::{parallel_for, SharedMut};
use super::sgemm_pack::{pack_a, pack_b, transpose16, MR, NR};
use super::view::View;
use std::arch::x86_64::*;

const KC: usize = 384;
const MC: usize = 120;
/// Columns of B packed at a time: KC x NC floats (768 KB) stay in L2 while every panel of A
/// passes over them. (4096, a 6 MB block that lived in L3, ran the forward products 15-25% slower.)
const NC: usize = 512;

thread_local! {
    static B_PACK: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static A_PACK: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A packing buffer borrowed from the thread's cache and given back on drop: packing buffers are
/// megabytes, and allocating (and zeroing) them on every product showed in profiles. Packing
/// writes every element it later reads, so reused contents never leak into results. (A buffer
/// taken while the thread's is out, which nested use can cause, is a fresh one.)
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

/// One row of the tile in the loop of [`tile_product`]: broadcast A(r, p) (at `base` + `off`) into
/// zmm`br` and multiply-add it with the B row (zmm24, zmm25) into zmm`acc0`, zmm`acc1`.
macro_rules! fma_row {
    ($base:literal, $off:literal, $acc0:literal, $acc1:literal, $br:literal) => {
        concat!(
            "vbroadcastss zmm",
            $br,
            ", dword ptr [",
            $base,
            $off,
            "]\n",
            "vfmadd231ps zmm",
            $acc0,
            ", zmm24, zmm",
            $br,
            "\n",
            "vfmadd231ps zmm",
            $acc1,
            ", zmm25, zmm",
            $br,
            "\n",
        )
    };
}

/// tile (MR x NR, row-major) = sum over p < kc of A column p x B-panel row p, where A(r, p) is at
/// a + r * rs + p * ps (a packed panel: rs = 1, ps = MR; row-major A read in place: rs = lda,
/// ps = 1). In assembly so that the 24 accumulators stay in registers: written with intrinsics,
/// the compiler spilled some of them to the stack in one of its inlining contexts, which cost a
/// quarter of the training step.
///
/// # Safety
/// avx512f is available; kc > 0; a + r * rs + p * ps is readable for r < MR, p < kc; `b` holds
/// kc * NR floats.
#[target_feature(enable = "avx512f")]
unsafe fn tile_product(
    kc: usize,
    a: *const f32,
    rs: usize,
    ps: usize,
    b: *const f32,
    tile: &mut [f32; MR * NR],
) {
    // Rows r = 3q + i are read at base q (a + 3q * rs) plus i * rs.
    std::arch::asm!(
        "vpxord zmm0, zmm0, zmm0",
        "vmovaps zmm1, zmm0", "vmovaps zmm2, zmm0", "vmovaps zmm3, zmm0",
        "vmovaps zmm4, zmm0", "vmovaps zmm5, zmm0", "vmovaps zmm6, zmm0",
        "vmovaps zmm7, zmm0", "vmovaps zmm8, zmm0", "vmovaps zmm9, zmm0",
        "vmovaps zmm10, zmm0", "vmovaps zmm11, zmm0", "vmovaps zmm12, zmm0",
        "vmovaps zmm13, zmm0", "vmovaps zmm14, zmm0", "vmovaps zmm15, zmm0",
        "vmovaps zmm16, zmm0", "vmovaps zmm17, zmm0", "vmovaps zmm18, zmm0",
        "vmovaps zmm19, zmm0", "vmovaps zmm20, zmm0", "vmovaps zmm21, zmm0",
        "vmovaps zmm22, zmm0", "vmovaps zmm23, zmm0",
        "2:",
        "vmovups zmm24, zmmword ptr [{b}]",
        "vmovups zmm25, zmmword ptr [{b} + 64]",
        "prefetcht0 [{b} + 1024]",
        "prefetcht0 [{b} + 1088]",
        fma_row!("{a0}", "", "0", "1", "26"),
        fma_row!("{a0}", " + {l}", "2", "3", "27"),
        fma_row!("{a0}", " + {l}*2", "4", "5", "26"),
        fma_row!("{a3}", "", "6", "7", "27"),
        fma_row!("{a3}", " + {l}", "8", "9", "26"),
        fma_row!("{a3}", " + {l}*2", "10", "11", "27"),
        fma_row!("{a6}", "", "12", "13", "26"),
        fma_row!("{a6}", " + {l}", "14", "15", "27"),
        fma_row!("{a6}", " + {l}*2", "16", "17", "26"),
        fma_row!("{a9}", "", "18", "19", "27"),
        fma_row!("{a9}", " + {l}", "20", "21", "26"),
        fma_row!("{a9}", " + {l}*2", "22", "23", "27"),
        "add {a0}, {ps}",
        "add {a3}, {ps}",
        "add {a6}, {ps}",
        "add {a9}, {ps}",
        "add {b}, 128",
        "dec {k}",
        "jnz 2b",
        "vmovups zmmword ptr [{t}], zmm0",
        "vmovups zmmword ptr [{t} + 64], zmm1",
        "vmovups zmmword ptr [{t} + 128], zmm2",
        "vmovups zmmword ptr [{t} + 192], zmm3",
        "vmovups zmmword ptr [{t} + 256], zmm4",
        "vmovups zmmword ptr [{t} + 320], zmm5",
        "vmovups zmmword ptr [{t} + 384], zmm6",
        "vmovups zmmword ptr [{t} + 448], zmm7",
        "vmovups zmmword ptr [{t} + 512], zmm8",
        "vmovups zmmword ptr [{t} + 576], zmm9",
        "vmovups zmmword ptr [{t} + 640], zmm10",
        "vmovups zmmword ptr [{t} + 704], zmm11",
        "vmovups zmmword ptr [{t} + 768], zmm12",
        "vmovups zmmword ptr [{t} + 832], zmm13",
        "vmovups zmmword ptr [{t} + 896], zmm14",
        "vmovups zmmword ptr [{t} + 960], zmm15",
        "vmovups zmmword ptr [{t} + 1024], zmm16",
        "vmovups zmmword ptr [{t} + 1088], zmm17",
        "vmovups zmmword ptr [{t} + 1152], zmm18",
        "vmovups zmmword ptr [{t} + 1216], zmm19",
        "vmovups zmmword ptr [{t} + 1280], zmm20",
        "vmovups zmmword ptr [{t} + 1344], zmm21",
        "vmovups zmmword ptr [{t} + 1408], zmm22",
        "vmovups zmmword ptr [{t} + 1472], zmm23",
        a0 = inout(reg) a => _,
        a3 = inout(reg) a.add(3 * rs) => _,
        a6 = inout(reg) a.add(6 * rs) => _,
        a9 = inout(reg) a.add(9 * rs) => _,
        b = inout(reg) b => _,
        k = inout(reg) kc => _,
        l = in(reg) rs * 4,
        ps = in(reg) ps * 4,
        t = in(reg) tile.as_mut_ptr(),
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _,
        out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _,
        out("zmm25") _, out("zmm26") _, out("zmm27") _,
        options(nostack),
    );
}

/// The MR x NR tile (see [`tile_product`] for how A is addressed): c = (accumulate ? c : 0) +
/// scale * tile for the valid `rows` x `cols` corner.
///
/// # Safety
/// As [`tile_product`]; c + i * ldc + j is writable for i < rows, j < cols.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    (a, rs, ps): (*const f32, usize, usize),
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    accumulate: bool,
    scale: f32,
) {
    // The tile of C is read or written once the loop is done: fetched meanwhile.
    for r in 0..rows {
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + 16) as *const i8);
    }
    let mut tile = [0f32; MR * NR];
    tile_product(kc, a, rs, ps, b, &mut tile);
    let s = _mm512_set1_ps(scale);
    if rows == MR && cols == NR {
        for r in 0..MR {
            for h in 0..NR / 16 {
                let dst = c.add(r * ldc + 16 * h);
                let mut out = _mm512_mul_ps(_mm512_loadu_ps(tile.as_ptr().add(r * NR + 16 * h)), s);
                if accumulate {
                    out = _mm512_add_ps(out, _mm512_loadu_ps(dst));
                }
                _mm512_storeu_ps(dst, out);
            }
        }
    } else {
        for r in 0..rows {
            for j in 0..cols {
                let dst = c.add(r * ldc + j);
                let v = scale * tile[r * NR + j];
                *dst = if accumulate { *dst + v } else { v };
            }
        }
    }
}

/// One product: dst (m x n, rows `dst_rs` apart) = [dst +] scale * a (m x k) . b (k x n).
#[derive(Clone, Copy)]
pub struct Product<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: *mut f32,
    pub dst_rs: usize,
    /// Add to dst instead of overwriting it.
    pub accumulate: bool,
    pub a: View<'a>,
    pub b: View<'a>,
    pub scale: f32,
}

/// Rows up to which a product with a transposed row-major B runs as [`swapped`].
const SWAP_ROWS: usize = 256;

/// See the module documentation.
///
/// # Safety
/// [`available`] is true; `dst + i * dst_rs + j` is writable for i < m, j < n and touched by no other
/// thread; `a` and `b` hold the m x k and k x n views (checked by the caller).
pub unsafe fn sgemm(p: Product, threads: usize) {
    let Product { m, n, k, a, b, .. } = p;
    // Swapped, x is packed (m x k) and the result transposed (m x n), instead of packing w^T
    // (k x n): worth it for k and n larger than m.
    if m <= SWAP_ROWS && m < n && m < k && a.cs == 1 && b.rs == 1 && b.cs != 1 {
        swapped(p, threads);
    } else {
        blocked(p, threads);
    }
}

/// x (m x k, row-major) times w^T (w row-major n x k) for few rows m (a prompt through a linear
/// layer), as (w x^T)^T: packing B = w^T would transpose the whole weight for only m rows of work
/// per element, a fifth of prompt processing. Here w is the A side, read in place, only x is
/// packed, and the n x m result is transposed into dst through 16 x 16 register transposes.
///
/// # Safety
/// As [`sgemm`].
unsafe fn swapped(p: Product, threads: usize) {
    let Product {
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        a,
        b,
        scale,
    } = p;
    let mut tmp = Vec::<f32>::with_capacity(n * m);
    let w = View {
        data: b.data,
        rs: b.cs,
        cs: 1,
    };
    // The product writes all n x m elements (accumulate = false), so the length can then be set.
    let product = Product {
        m: n,
        n: m,
        k,
        dst: tmp.as_mut_ptr(),
        dst_rs: m,
        accumulate: false,
        a: w,
        b: a.t(),
        scale: 1.0,
    };
    blocked(product, threads);
    tmp.set_len(n * m);
    let out = SharedMut(dst);
    let tmp = &tmp;
    parallel_for(m.div_ceil(16), |ib| {
        let (i0, h) = (ib * 16, 16.min(m - ib * 16));
        let mut block = [0f32; 256];
        for j0 in (0..n).step_by(16) {
            let w = 16.min(n - j0);
            // block[i * 16 + j] = tmp[(j0 + j) * m + i0 + i]
            if h == 16 && w == 16 {
                // SAFETY: 16 x 16 elements of tmp from (j0, i0), and the 256 of block.
                transpose16(tmp.as_ptr().add(j0 * m + i0), m, block.as_mut_ptr(), 16);
            } else {
                for i in 0..h {
                    for j in 0..w {
                        block[i * 16 + j] = tmp[(j0 + j) * m + i0 + i];
                    }
                }
            }
            for i in 0..h {
                // SAFETY: row i0 + i, columns j0..j0 + w of dst: this task's rows alone.
                let row = out.slice((i0 + i) * dst_rs + j0, w);
                for (j, r) in row.iter_mut().enumerate() {
                    let v = scale * block[i * 16 + j];
                    *r = if accumulate { *r + v } else { v };
                }
            }
        }
    });
}

/// The BLIS-style product of the module documentation.
///
/// # Safety
/// As [`sgemm`].
unsafe fn blocked(p: Product, threads: usize) {
    let Product {
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        a,
        b,
        scale,
    } = p;
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
                pack_b(&b, p0, kc, j0, nc, &mut bpack.0);
                let bp = &bpack.0;
                let block = |i0: usize| {
                    let mc = mc.min(m - i0);
                    // Row-major A is read in place, its rows broadcast straight from the source:
                    // packing it is a scalar transpose that cost as much as a tenth of a training
                    // step. Other layouts, and a ragged last panel (the kernel reads MR rows), are
                    // packed.
                    let in_place = a.cs == 1;
                    let mut apack = Scratch::take(&A_PACK, MC * KC);
                    let apack = &mut apack.0;
                    if !in_place {
                        pack_a(&a, i0, mc, p0, kc, apack);
                    } else if !mc.is_multiple_of(MR) {
                        let last = mc - mc % MR;
                        pack_a(
                            &a,
                            i0 + last,
                            mc % MR,
                            p0,
                            kc,
                            &mut apack[(last / MR) * kc * MR..],
                        );
                    }
                    // Each MR-row panel of A (kc x MR, 18 KB) stays in L1 while the B panels
                    // stream past it from L2.
                    for (ip, ir) in (0..mc).step_by(MR).enumerate() {
                        for (jp, jr) in (0..nc).step_by(NR).enumerate() {
                            let (rows, cols) = (MR.min(mc - ir), NR.min(nc - jr));
                            // SAFETY: rows i0+ir.., columns j0+jr.. of dst, inside the m x n
                            // destination; the MC blocks of different tasks are disjoint; the
                            // packed panels hold kc * MR and kc * NR floats; a full panel of
                            // row-major A has MR rows of kc elements from (i0 + ir, p0).
                            unsafe {
                                let b = bp.as_ptr().add(jp * kc * NR);
                                let c = out.at((i0 + ir) * dst_rs + j0 + jr);
                                let panel = if in_place && rows == MR {
                                    (a.data.as_ptr().add((i0 + ir) * a.rs + p0), a.rs, 1)
                                } else {
                                    (apack.as_ptr().add(ip * kc * MR), 1, MR)
                                };
                                kernel(kc, panel, b, c, dst_rs, (rows, cols), acc, scale)
                            };
                        }
                    }
                };
                let starts: Vec<usize> = (0..m).step_by(mc).collect();
                if threads > 1 && starts.len() > 1 {
                    parallel_for(starts.len(), |s| block(starts[s]));
                } else {
                    starts.iter().for_each(|&i0| block(i0));
                }
            }
        }
    }
}
