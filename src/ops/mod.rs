//! The ops the model calls, one file each: linear layers, norms, attention and its causal softmax,
//! the loss, activations, rotary embeddings, token embeddings, and the fused training block. Each
//! file holds the op's forward and backward and is the one place that chooses how it runs:
//!
//! - a fused CPU kernel (`kernels::cpu`) for f32 on the CPU, unless switched off
//!   (`CHATFORGE_NO_FUSED=1`, `kernels::cpu::features::set_fused`);
//! - the decoding step's matrix-vector product or block-quantized weights, for a few rows without
//!   gradients;
//! - the portable formulation everywhere else (a GPU, bf16 on the CPU), described below;
//!
//! and, for the tests, the composed candle version it is checked against (`reference`).
//!
//! candle's fused norm/softmax/rotary/sdpa kernels have no backward pass and would silently cut
//! gradients: only composed ops and our own ops with backward passes are used; where candle's
//! fused softmax runs (on a detached input), [`grad::with_grad`] attaches the backward.
//!
//! # The portable formulation
//!
//! Where the fused kernels do not run (CUDA; bf16 on the CPU), each op is written so that no large
//! tensor goes through candle's broadcasting or reducing kernels. Why: candle's CUDA kernels for a
//! broadcast binary op (`broadcast_sub`, `broadcast_div`, ...) and for a reduction compute every
//! element's strided index with 64-bit divisions and remainders, one pair per dimension. The
//! composed softmax makes about fifteen such passes per layer over the (B, H, T, T) scores
//! (forward and backward); for GPT-2 124M at context 1024 that is 100 million elements a pass, and
//! the same again over the (N, V) logits of the loss. The one H200 run (README) spent about 0.6 s a
//! step outside the matrix products, in f32 and bf16 alike, which fits integer-bound index
//! arithmetic rather than memory or tensor-core time.
//!
//! What runs instead:
//! - forward: candle's fused softmax kernel (`candle_nn::ops::softmax_last_dim`, one pass over
//!   contiguous rows) after adding a causal mask of the scores' whole shape (contiguous + contiguous
//!   is candle's index-free path; the mask is built once per shape and kept);
//! - backward: contiguous elementwise ops, with row sums and their expansion back to rows done as
//!   products with a vector of ones (cuBLAS, [`ones`]), `dx = y * (dy - rowsum(dy * y))`;
//! - the loss: `nll = max(x) - ln(max(softmax(x))) - x[target]` (the log-sum-exp from the row's
//!   largest probability, which cannot underflow), and `dx = (softmax(x) - onehot) * g`;
//! - norms and biases: row means and the expansion of per-row and per-channel vectors as products
//!   with ones, so that candle's own backward passes stay index-free too.
//!
//! With the fused kernels switched off (`CHATFORGE_NO_FUSED=1`) the CPU runs every op as a GPU
//! does: `tests/portable_path.rs` checks that path against transformers, `tests/device_ops.rs`
//! each portable function against the composed reference, values and gradients.

pub mod activation;
pub mod attention;
pub mod block;
pub mod embedding;
pub mod grad;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod ones;
pub mod output_head;
pub mod rope;
pub mod softmax;
