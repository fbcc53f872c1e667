//! Token embeddings, plus learned position embeddings where the model has them (GPT-2).

use crate::error::Result;
use crate::kernels::cpu::blockq::BlockWeight;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// The token embedding (V, C): a tensor, or 8-bit blocks (a GGUF file's, held as they lie for
/// inference) whose rows are dequantized as they are looked up.
#[derive(Clone)]
pub enum TokenEmbedding {
    Dense(Tensor),
    Blocks(Arc<BlockWeight>, Device),
}

impl TokenEmbedding {
    pub fn device(&self) -> &Device {
        match self {
            TokenEmbedding::Dense(t) => t.device(),
            TokenEmbedding::Blocks(_, d) => d,
        }
    }

    /// The rows of `ids` (N,) u32 -> (N, C).
    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Dense(t) => Ok(t.index_select(ids, 0)?),
            TokenEmbedding::Blocks(q, device) => {
                let ids = ids.to_vec1::<u32>()?;
                let rows = q.rows_f32(&ids)?;
                Ok(Tensor::from_vec(rows, (ids.len(), q.dims().1), device)?)
            }
        }
    }
}

/// The embedding of token ids idx (B, T) at positions start..start + T -> (B, T, C).
pub fn embed(
    wte: &TokenEmbedding,
    wpe: Option<&Tensor>,
    idx: &Tensor,
    start: usize,
) -> Result<Tensor> {
    let (b, t) = idx.dims2()?;
    let x = wte.rows(&idx.flatten_all()?)?.reshape((b, t, ()))?;
    Ok(match wpe {
        Some(wpe) => x.broadcast_add(&wpe.narrow(0, start, t)?)?,
        None => x,
    })
}

/// The embedding of one token for each of B sequences, each at its own position -> (B, 1, C).
pub fn embed_ragged(
    wte: &TokenEmbedding,
    wpe: Option<&Tensor>,
    tokens: &[u32],
    positions: &[usize],
) -> Result<Tensor> {
    let (b, dev) = (tokens.len(), wte.device());
    let ids = Tensor::from_slice(tokens, b, dev)?;
    let x = wte.rows(&ids)?.reshape((b, 1, ()))?;
    Ok(match wpe {
        Some(wpe) => {
            let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let pe = wpe.index_select(&Tensor::from_vec(pos, b, dev)?, 0)?;
            x.broadcast_add(&pe.reshape((b, 1, ()))?)?
        }
        None => x,
    })
}
