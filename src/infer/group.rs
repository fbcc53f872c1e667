//! Many replies decoded together: each prompt runs once into a KV cache that its `n` sequences
//! share (copy-on-write) and continue, and every step runs all unfinished sequences through one
//! [`Transformer::forward_step_batch`], as the server's engine batches its requests. GRPO samples
//! its groups this way.

use super::decoder::{Decoder, GenerateOptions, Generation};
use crate::error::{Error, Result};
use crate::model::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use candle_core::DType;

/// The seed of sequence `k` of a batch drawn with `seed`: a stream of its own for each.
pub fn sequence_seed(seed: u64, k: usize) -> u64 {
    seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `n` continuations of each prompt under `opts` (sequence k = prompt k / n draws with
/// [`sequence_seed`]`(opts.sampling.seed, k)`), prompt after prompt, each prompt and its
/// continuation within `context` positions (at most the model's).
pub fn generate_groups(
    model: &Transformer,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    n: usize,
    opts: &GenerateOptions,
    context: usize,
) -> Result<Vec<Generation>> {
    let context = context.min(model.cfg.context);
    let mut decoders = Vec::with_capacity(prompts.len() * n);
    let mut caches: Vec<Option<KvCache>> = Vec::with_capacity(prompts.len() * n);
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(prompts.len() * n);
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() || prompt.len() >= context {
            return Err(Error::Mismatch(format!(
                "prompt {i} has {} tokens; it needs at least one and fewer than the context of {context}",
                prompt.len()
            )));
        }
        let (cache, logits) = model.prefill(prompt)?;
        let row: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        for _ in 0..n {
            let mut o = opts.clone();
            o.sampling.seed = sequence_seed(opts.sampling.seed, decoders.len());
            decoders.push(Decoder::new(tok, prompt, &o, context));
            caches.push(Some(cache.clone()));
            rows.push(row.clone());
        }
    }
    let mut active: Vec<usize> = (0..decoders.len())
        .filter(|&k| decoders[k].budget() > 0)
        .collect();
    while !active.is_empty() {
        for &k in &active {
            decoders[k].step(&rows[k])?;
        }
        active.retain(|&k| decoders[k].finished().is_none());
        if active.is_empty() {
            break;
        }
        let tokens: Vec<u32> = active
            .iter()
            .map(|&k| {
                decoders[k]
                    .last()
                    .expect("an unfinished sequence has a token")
            })
            .collect();
        let mut batch: Vec<KvCache> = active
            .iter()
            .map(|&k| caches[k].take().expect("each cache is in one batch"))
            .collect();
        let logits = model.forward_step_batch(&tokens, &mut batch);
        for (&k, c) in active.iter().zip(batch) {
            caches[k] = Some(c);
        }
        let logits = logits?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let v = logits.len() / active.len();
        for (&k, row) in active.iter().zip(logits.chunks_exact(v)) {
            rows[k].clear();
            rows[k].extend_from_slice(row);
        }
    }
    decoders
        .into_iter()
        .map(|mut d| {
            d.flush()?;
            Ok(d.into_generation())
        })
        .collect()
}
