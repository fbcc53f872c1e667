//! One sequence being decoded, whoever runs the model: the sampler, the stop tokens and stop
//! strings, the streamed text and the token budget. [`generate_text`] drives one over a KV cache;
//! the server's batched engine drives many, one logits row each per step.
//!
//! [`generate_text`]: super::generate::generate_text

use super::sampler::{Sampler, SamplingParams};
use super::stream::TextOutput;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

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
    /// The stop token that ended the text, if one did (it is not in `ids`).
    pub stop_token: Option<u32>,
}

/// The most new tokens a prompt of `prompt_len` leaves in a model's `context` when `wanted` are
/// asked for: the last new token sits at position `context - 1` at most.
pub fn token_budget(wanted: usize, prompt_len: usize, context: usize) -> usize {
    wanted.min(context.saturating_sub(prompt_len))
}

pub struct Decoder<'t> {
    sampler: Sampler,
    stop_ids: Vec<u32>,
    out: TextOutput<'t>,
    /// The prompt and the new tokens (the repetition penalty looks at all of them).
    context: Vec<u32>,
    prompt_tokens: usize,
    /// The new tokens (a stop token is not one of them).
    ids: Vec<u32>,
    budget: usize,
    finish: Option<FinishReason>,
    stop_token: Option<u32>,
}

impl<'t> Decoder<'t> {
    /// A decoder for the continuation of `prompt` in a model of `context` positions, with the
    /// budget of [`token_budget`].
    pub fn new(tok: &'t Tokenizer, prompt: &[u32], opts: &GenerateOptions, context: usize) -> Self {
        Decoder {
            sampler: Sampler::new(opts.sampling.clone()),
            stop_ids: opts.stop_ids.clone(),
            out: TextOutput::new(tok, opts.stop_strings.clone()),
            context: prompt.to_vec(),
            prompt_tokens: prompt.len(),
            ids: Vec::new(),
            budget: token_budget(opts.max_new_tokens, prompt.len(), context),
            finish: None,
            stop_token: None,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Why the sequence ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The new tokens so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The token the model reads next (the last one sampled).
    pub fn last(&self) -> Option<u32> {
        self.ids.last().copied()
    }

    /// Samples the next token from the logits `row` of the last position: the token and the text
    /// it lets out, or None where it was a stop token. Afterwards [`Decoder::finished`] says
    /// whether the sequence ended (a stop token or string, or the budget spent).
    pub fn step(&mut self, row: &[f32]) -> Result<Option<(u32, String)>> {
        let id = self.sampler.sample(row, &self.context);
        if self.stop_ids.contains(&id) {
            self.finish = Some(FinishReason::Stop);
            self.stop_token = Some(id);
            return Ok(None);
        }
        self.context.push(id);
        self.ids.push(id);
        let (piece, stopped) = self.out.push(id)?;
        if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if self.ids.len() >= self.budget {
            self.finish = Some(FinishReason::Length);
        }
        Ok(Some((id, piece)))
    }

    /// Ends a sequence the budget stopped (or that had none): the text held back for a possible
    /// stop string, which may turn out to be one (the reason becomes Stop). Nothing after a stop.
    pub fn flush(&mut self) -> Result<String> {
        if self.finish == Some(FinishReason::Stop) {
            return Ok(String::new());
        }
        let (rest, stopped) = self.out.finish()?;
        self.finish = Some(match stopped {
            true => FinishReason::Stop,
            false => FinishReason::Length,
        });
        Ok(rest)
    }

    /// The whole generation (call after [`Decoder::flush`]).
    pub fn into_generation(self) -> Generation {
        Generation {
            text: self.out.text,
            ids: self.ids,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            prompt_tokens: self.prompt_tokens,
            stop_token: self.stop_token,
        }
    }
}
