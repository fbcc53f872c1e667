//! A checked front door to the `gemm` crate: dst (m × n) = [dst +] scale · lhs (m × k) · rhs (k × n),
//! every operand a strided view into a slice, so transposes cost nothing.

pub use super::view::View;
use gemm::Parallelism;

/// How many threads one product may use: all of the pool's from outside a parallel task, one inside.
pub fn threads() -> usize {
    if super::parallel::in_task() {
        1
    } else {
        candle_core::utils::get_num_threads()
    }
}

/// dst = (accumulate ? dst : 0) + scale · a · b, with `dst` row-major (row stride `dst_rs`).
/// Panics if a view does not hold the m × k, k × n or m × n elements asked for: a kernel bug, not
/// a user error.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
) {
    let d = View {
        data: dst,
        rs: dst_rs,
        cs: 1,
    };
    assert!(d.reaches(m, n), "gemm destination out of bounds");
    // SAFETY: dst holds the m × n view (checked) and is exclusively borrowed.
    unsafe { matmul_ptr(m, n, k, dst.as_mut_ptr(), dst_rs, accumulate, a, b, scale) }
}

/// scale · a (m × k) · b (k × n) as a new row-major m × n buffer (not zeroed first: the product
/// writes every element).
pub fn matmul_new(m: usize, n: usize, k: usize, a: View, b: View, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the m × n destination with row stride n is the allocation's capacity, and with
    // accumulate = false every element is written, so the length can then be set.
    unsafe {
        matmul_ptr(m, n, k, out.as_mut_ptr(), n, false, a, b, scale);
        out.set_len(m * n);
    }
    out
}

/// [`matmul`] into a raw destination, for parallel tasks that write interleaved (disjoint) parts of
/// one buffer.
///
/// # Safety
/// `dst + i * dst_rs + j` must be valid for writes for i < m, j < n, and no other thread may touch
/// those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_ptr(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
) {
    assert!(
        a.reaches(m, k) && b.reaches(k, n),
        "gemm operand out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        let product = super::sgemm::Product {
            m,
            n,
            k,
            dst,
            dst_rs,
            accumulate,
            a,
            b,
            scale,
        };
        super::sgemm::sgemm(product, threads());
        return;
    }
    let par = match threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        par,
    )
}
