//! The decoding loop: prefill the prompt once, then one token at a time over the KV cache.

use super::sampler::{Sampler, SamplingParams};
use crate::error::Result;
use crate::model::{KvCache, Transformer};
use candle_core::Tensor;

/// Continues `prompt` by up to `max_new` tokens (fewer if the context fills or `stop` is produced).
/// Returns only the new tokens.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    params: &SamplingParams,
    stop: Option<u32>,
) -> Result<Vec<u32>> {
    let cfg = &model.cfg;
    let mut sampler = Sampler::new(params.clone());
    // Keep the most recent tokens if the prompt is longer than the context allows.
    let keep = prompt.len().min(cfg.context.saturating_sub(1)).max(1);
    let prompt = &prompt[prompt.len() - keep..];
    let mut cache = KvCache::new(cfg.n_layer, 1, cfg.n_kv_head, cfg.head_dim, model.device())?;
    let x = Tensor::from_slice(prompt, (1, prompt.len()), model.device())?;
    let mut logits = model.forward_last(&x, 0, Some(&mut cache))?;
    let mut out = Vec::new();
    while out.len() < max_new {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = sampler.sample(&row);
        if Some(next) == stop {
            break;
        }
        out.push(next);
        if cache.len() + 1 > cfg.context || out.len() == max_new {
            break;
        }
        let x = Tensor::from_slice(&[next], (1, 1), model.device())?;
        let pos = cache.len();
        logits = model.forward_last(&x, pos, Some(&mut cache))?;
    }
    Ok(out)
}
