//! A whole transformer block as one fused CPU node in training (`kernels::cpu::block`): its
//! weights' gradients go to a sink that `Transformer::backward` collects, outside candle's graph.

use crate::error::Result;
use crate::kernels::cpu::block::{self, BlockKind, BlockParams, GradSink};
use candle_core::Tensor;

/// The block on x (B, T, C) from position 0 as one fused node, where it applies (f32 on the CPU,
/// x in the graph, every parameter a trained variable); None where the separate ops must run.
pub fn fused_block(
    x: &Tensor,
    params: &BlockParams,
    kind: &BlockKind,
    sink: &GradSink,
) -> Result<Option<Tensor>> {
    if !block::applies(x, params) {
        return Ok(None);
    }
    Ok(Some(block::block(x, params, kind, sink)?))
}
