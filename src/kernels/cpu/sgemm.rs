//! A single-precision GEMM for CPUs with AVX-512: BLIS's loop structure (pack a KC x NC panel of B,
//! then run an MR x NR register-tile kernel over MC x KC blocks of A), MC blocks split over the
//! cores. Row-major A is read in place (its rows broadcast straight from the source); other
//! layouts of A are packed. Transposing packs go through 16 x 16 register transposes, and the
//! kernel's loop is assembly so that its 24 accumulators stay in registers. The `gemm` crate's
//! kernels are AVX2 (AVX-512 needs a nightly compiler there) and reach about half of a core's
//! fp32 peak; this one is the reason `matmul` checks for `avx512f` first.
//!
//! dst (m x n, row stride `dst_rs`) = [dst +] scale * A (m x k) * B (k x n), A and B strided views.

use super::parallel::{for_each_chunk_mut, parallel_for, SharedMut};
use super::view::View;
use std::arch::x86_64::*;

/// Rows of the register tile (one broadcast of A each).
const MR: usize = 12;
/// Columns of the register tile: two 16-lane vectors.
const NR: usize = 32;
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

/// B (kc x nc) from (p0, j0) into NR-wide column panels, each kc x NR row-major, zero-padded;
/// panels split over the cores (one thread inside a parallel task).
fn pack_b(b: &View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
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
unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
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
fn pack_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
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
