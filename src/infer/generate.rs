//! The decoding loop: prefill the prompt once, then one token at a time over the KV cache; and the
//! text layer on top of it (streamed pieces, stop tokens, stop strings).

use super::sampler::{Sampler, SamplingParams};
use super::stream::TextOutput;
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use candle_core::Tensor;

/// Runs the model over `prompt`, then samples up to `max_new` tokens, calling `on_token` with each;
/// it returns false to stop. Returns the new tokens.
pub fn decode_loop(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    let cfg = &model.cfg;
    if prompt.is_empty() {
        return Err(Error::Mismatch("the prompt has no tokens".into()));
    }
    if prompt.len() >= cfg.context {
        return Err(Error::Mismatch(format!(
            "the prompt has {} tokens but the model's context is {}",
            prompt.len(),
            cfg.context
        )));
    }
    let (mut cache, mut logits) = model.prefill(prompt)?;
    let mut context = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_new {
        let row: Vec<f32> = logits
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let next = sampler.sample(&row, &context);
        out.push(next);
        context.push(next);
        if !on_token(next)? || out.len() == max_new || cache.len() + 1 >= cfg.context {
            break;
        }
        let x = Tensor::from_slice(&[next], (1, 1), model.device())?;
        let pos = cache.len();
        logits = model.forward_last(&x, pos, Some(&mut cache))?;
    }
    Ok(out)
}

/// Continues `prompt` by up to `max_new` tokens, stopping before `stop`. Returns only the new tokens.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    params: &SamplingParams,
    stop: Option<u32>,
) -> Result<Vec<u32>> {
    let keep = prompt.len().min(model.cfg.context.saturating_sub(1)).max(1);
    let prompt = &prompt[prompt.len() - keep..];
    let mut sampler = Sampler::new(params.clone());
    let mut out = decode_loop(model, prompt, max_new, &mut sampler, |id| {
        Ok(Some(id) != stop)
    })?;
    if out.last().copied() == stop && stop.is_some() {
        out.pop();
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or stop string ended the text.
    Stop,
    /// The token budget or the context ran out.
    Length,
}

#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end the text (not included): end-of-text, <|im_end|>...
    pub stop_ids: Vec<u32>,
    /// Strings that end the text (not included).
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Generates text, calling `on_text` with each piece as soon as it is safe to show (see
/// [`TextOutput`]).
pub fn generate_text(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut out = TextOutput::new(tok, opts.stop_strings.clone());
    let mut finish = FinishReason::Length;
    let mut ids = Vec::new();
    decode_loop(model, prompt, opts.max_new_tokens, &mut sampler, |id| {
        if opts.stop_ids.contains(&id) {
            finish = FinishReason::Stop;
            return Ok(false);
        }
        ids.push(id);
        let (piece, stopped) = out.push(id)?;
        if !piece.is_empty() {
            on_text(&piece)?;
        }
        if stopped {
            finish = FinishReason::Stop;
        }
        Ok(!stopped)
    })?;
    if finish == FinishReason::Length {
        let (piece, stopped) = out.finish()?;
        if !piece.is_empty() {
            on_text(&piece)?;
        }
        if stopped {
            finish = FinishReason::Stop;
        }
    }
    Ok(Generation {
        text: out.text,
        ids,
        finish_reason: finish,
        prompt_tokens: prompt.len(),
    })
}
