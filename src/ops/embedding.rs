//! Token embeddings, plus learned position embeddings where the model has them (GPT-2).

use crate::error::Result;
use candle_core::Tensor;

/// The embedding of token ids idx (B, T) at positions start..start + T -> (B, T, C).
pub fn embed(wte: &Tensor, wpe: Option<&Tensor>, idx: &Tensor, start: usize) -> Result<Tensor> {
    let (b, t) = idx.dims2()?;
    let x = wte
        .index_select(&idx.flatten_all()?, 0)?
        .reshape((b, t, ()))?;
    Ok(match wpe {
        Some(wpe) => x.broadcast_add(&wpe.narrow(0, start, t)?)?,
        None => x,
    })
}

/// The embedding of one token for each of B sequences, each at its own position -> (B, 1, C).
pub fn embed_ragged(
    wte: &Tensor,
    wpe: Option<&Tensor>,
    tokens: &[u32],
    positions: &[usize],
) -> Result<Tensor> {
    let (b, dev) = (tokens.len(), wte.device());
    let ids = Tensor::from_slice(tokens, b, dev)?;
    let x = wte.index_select(&ids, 0)?.reshape((b, 1, ()))?;
    Ok(match wpe {
        Some(wpe) => {
            let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let pe = wpe.index_select(&Tensor::from_vec(pos, b, dev)?, 0)?;
            x.broadcast_add(&pe.reshape((b, 1, ()))?)?
        }
        None => x,
    })
}
