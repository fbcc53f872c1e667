//! Fused CPU kernels for training, each a candle `CustomOp` with its own backward pass, so that one
//! layer is one or two passes over memory instead of the dozen small ops (and their dozen backward
//! ops, each allocating) that composing candle ops builds:
//!
//! - [`linear`]: x @ w^T + b straight into one GEMM call, the bias folded in; the backward pass is
//!   two GEMMs on strided views (no transposed copies) and a column sum.
//! - [`norm`]: LayerNorm / RMSNorm with affine weights; backward recomputes the row statistics.
//! - [`attention`]: causal self-attention read straight out of the fused qkv projection, one
//!   (sequence, head) per task, in blocks of query rows that stop at the diagonal; the score matrix
//!   is never materialised for the batch, and backward recomputes it block by block.
//! - [`lm_loss`]: the output projection and the per-token loss in one op, whose backward pass turns
//!   the logits it kept into their gradient in place.
//!
//! Matrix products go through [`gemm`]: our AVX-512 GEMM where the CPU has it, else the `gemm` crate
//! (the GEMM candle itself uses). Every op falls back to
//! composed candle ops off the CPU or off f32; `tests/fused_ops.rs` compares the two paths, values and
//! gradients.

pub mod attention;
pub mod exp;
pub mod gemm;
pub mod linear;
pub mod lm_loss;
pub mod norm;
#[cfg(target_arch = "x86_64")]
mod sgemm;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

type CResult<T> = candle_core::Result<T>;

/// The f32 data of a contiguous CPU storage.
pub(crate) fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> CResult<&'a [f32]> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(&storage.as_slice::<f32>()?[a..b])
}

/// Runs `f` on the f32 data of a CPU tensor (made contiguous first).
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => Ok(f(f32_data(cpu, layout, op)?)),
        _ => candle_core::bail!("{op}: CPU tensor expected"),
    }
}

/// Whether the fused kernels apply: f32 on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs f(i) for every i < n over candle's CPU worker pool, the threads candle's own ops run on
/// (the calling thread among them), in chunks taken from a shared cursor. One pool for both: while
/// the GEMM ran on rayon's pool, candle's idle worker spun on the same cores (and rayon's while
/// candle's ops ran); moving the GEMM here made SmolLM2's prompt processing 37% faster and the
/// training step about 6%. Must not be called from inside `f` on the calling thread (candle's pool
/// is not reentrant there); the GEMM's tasks and the attention's (on rayon) do not.
pub(crate) fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

/// A pointer that parallel tasks share to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes regions no other task touches (documented at each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The element `offset` past the start (a method, so that closures capture the whole
    /// `SharedMut` and not the bare pointer).
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// Sum of the rows of `x` (rows × cols), split over the cores: (cols,).
fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let rows = x.len() / cols;
    let chunk = rows.div_ceil(rayon::current_num_threads()).max(1);
    x.par_chunks(chunk * cols)
        .map(|part| {
            let mut acc = vec![0f32; cols];
            for row in part.chunks_exact(cols) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .reduce(
            || vec![0f32; cols],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}
