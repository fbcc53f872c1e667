//! The CPU kernels: SIMD code and fused candle `CustomOp`s, each with its own backward pass, so that one
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
//! - [`matvec`], [`blockq`]: decoding's matrix-vector products on f32/f16 rows and on 4- and 8-bit
//!   blocks; [`nll`], [`softmax`], [`activation`], [`rope`], [`exp`]: the elementwise and row kernels.
//!
//! Matrix products go through [`gemm`]: our AVX-512 GEMM where the CPU has it, else the `gemm` crate
//! (the GEMM candle itself uses). [`features`] says which kernels this CPU runs. These functions take
//! f32 CPU tensors; `ops` chooses between them and the portable formulation, and
//! `tests/fused_ops.rs` compares the two, values and gradients.

pub mod activation;
pub mod attention;
pub mod block;
pub mod blockq;
mod blockq_int8;
pub mod exp;
pub mod features;
pub mod gemm;
pub mod linear;
pub mod lm_loss;
pub mod matvec;
pub mod nll;
pub mod norm;
pub mod parallel;
mod pool;
mod pool_stalls;
pub mod rope;
#[cfg(target_arch = "x86_64")]
mod sgemm;
#[cfg(target_arch = "x86_64")]
mod sgemm_pack;
pub mod softmax;
pub mod storage;
pub mod view;
