//! Mean next-token loss and bits per byte over a text, in non-overlapping windows of the model's
//! context (each window predicts its tokens 1.. from the ones before it inside the window).

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::ops::loss::token_nll;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Tensor};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    /// Mean cross-entropy in nats per predicted token.
    pub loss: f64,
    /// Number of predicted tokens.
    pub tokens: usize,
    /// Total loss in bits over the UTF-8 bytes of the predicted tokens: comparable across tokenizers.
    pub bits_per_byte: f64,
}

/// Scores token windows (each `inputs + 1` long, all the same length) in batches of `batch`.
/// Returns (sum of nats, number of predicted tokens, bytes of the predicted tokens).
pub fn score_windows(
    model: &Transformer,
    windows: &[&[u32]],
    token_bytes: &[u32],
    batch: usize,
) -> Result<(f64, usize, u64)> {
    let (mut nats, mut count, mut bytes) = (0f64, 0usize, 0u64);
    for chunk in windows.chunks(batch.max(1)) {
        let t = chunk[0].len() - 1;
        let inputs: Vec<u32> = chunk.iter().flat_map(|w| w[..t].iter().copied()).collect();
        let targets: Vec<i64> = chunk
            .iter()
            .flat_map(|w| w[1..].iter().map(|&x| x as i64))
            .collect();
        let x = Tensor::from_vec(inputs, (chunk.len(), t), model.device())?;
        let logits = model.forward(&x, 0, None)?;
        let v = logits.dim(2)?;
        let y = Tensor::from_vec(targets.clone(), targets.len(), model.device())?;
        let nll = token_nll(&logits.reshape(((), v))?, &y)?;
        nats += nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        count += targets.len();
        bytes += targets
            .iter()
            .map(|&i| token_bytes.get(i as usize).copied().unwrap_or(0) as u64)
            .sum::<u64>();
    }
    Ok((nats, count, bytes))
}

/// Loss and bits per byte of `text` under the model.
pub fn text_perplexity(
    model: &Transformer,
    tok: &Tokenizer,
    text: &str,
    batch: usize,
) -> Result<PplResult> {
    let ids = tok.encode(text)?;
    if ids.len() < 2 {
        return Err(Error::Mismatch(
            "the text is shorter than two tokens: nothing to score".into(),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model.cfg.vocab_size) {
        return Err(Error::Mismatch(format!(
            "the tokenizer produced id {bad} but the model's vocab_size is {}",
            model.cfg.vocab_size
        )));
    }
    let ctx = model.cfg.context;
    let mut full = Vec::new();
    let mut tail = Vec::new();
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + ctx + 1).min(ids.len());
        if end - start == ctx + 1 {
            full.push(&ids[start..end]);
        } else {
            tail.push(&ids[start..end]);
        }
        start += ctx;
    }
    let tb = tok.token_bytes();
    let (n1, c1, b1) = if full.is_empty() {
        (0.0, 0, 0)
    } else {
        score_windows(model, &full, &tb, batch)?
    };
    let (n2, c2, b2) = if tail.is_empty() {
        (0.0, 0, 0)
    } else {
        score_windows(model, &tail, &tb, 1)?
    };
    let (nats, count, bytes) = (n1 + n2, c1 + c2, b1 + b2);
    Ok(PplResult {
        loss: nats / count as f64,
        tokens: count,
        bits_per_byte: if bytes == 0 {
            f64::NAN
        } else {
            nats / std::f64::consts::LN_2 / bytes as f64
        },
    })
}
