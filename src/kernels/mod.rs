//! Hand-written kernels beneath the ops: `cpu` (SIMD and fused candle `CustomOp`s for f32 on the
//! CPU). GPU kernels go beside it in `cuda`, behind the `cuda` feature.

pub mod cpu;
