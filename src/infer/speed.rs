//! Inference speed, measured the way llama.cpp's `llama-bench` measures it: prompt processing
//! (one forward pass over a P-token prompt into a fresh KV cache) and generation (N tokens, one
//! forward pass each, greedy), each repeated after a warm-up run; medians reported.

use crate::error::{Error, Result};
use crate::model::Transformer;
use candle_core::Tensor;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub runs: usize,
    /// Median prompt-processing speed, tokens/s.
    pub prompt_tokens_per_sec: f64,
    /// Median generation speed, tokens/s.
    pub decode_tokens_per_sec: f64,
    pub prompt_runs: Vec<f64>,
    pub decode_runs: Vec<f64>,
}

/// The prompt every implementation is given: token i is (7919 i + 13) mod V, reproducible
/// anywhere without a tokenizer (speed does not depend on what the tokens say).
pub fn synthetic_prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((7919 * i + 13) % vocab) as u32).collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the measurement: one warm-up, then `runs` timed repetitions.
pub fn measure(
    model: &Transformer,
    prompt_tokens: usize,
    new_tokens: usize,
    runs: usize,
) -> Result<SpeedReport> {
    let ctx = model.cfg.context;
    if prompt_tokens == 0 || prompt_tokens + new_tokens > ctx || runs == 0 {
        return Err(Error::Config(format!(
            "bench: --prompt-tokens ({prompt_tokens}, at least 1) plus --new-tokens ({new_tokens}) must fit the model's context of {ctx}, with --runs at least 1"
        )));
    }
    let prompt = synthetic_prompt(prompt_tokens, model.cfg.vocab_size);
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let t0 = Instant::now();
        let (mut cache, mut logits) = model.prefill(&prompt)?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..new_tokens {
            let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
            let x = Tensor::from_slice(&[next], (1, 1), model.device())?;
            let pos = cache.len();
            logits = model.forward_last(&x, pos, Some(&mut cache))?;
        }
        let decode = t1.elapsed().as_secs_f64();
        if run > 0 {
            pp.push(prompt_tokens as f64 / prefill);
            if new_tokens > 0 {
                tg.push(new_tokens as f64 / decode);
            }
        }
    }
    Ok(SpeedReport {
        prompt_tokens,
        new_tokens,
        runs,
        prompt_tokens_per_sec: median(&pp),
        decode_tokens_per_sec: if tg.is_empty() { 0.0 } else { median(&tg) },
        prompt_runs: pp,
        decode_runs: tg,
    })
}
