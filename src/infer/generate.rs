//! The decoding loop of one sequence: prefill the prompt once, then one token at a time over the
//! KV cache, each chosen by a [`Decoder`] (sampling, stop tokens and strings, streamed text).

use super::decoder::{Decoder, GenerateOptions, Generation};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Tensor};

/// The tokens a plain completion (no chat template) stops at: the end of a document
/// (`<|endoftext|>`) and the model's end-of-sequence token (an instruct model's `<|im_end|>`), as
/// transformers' `generate` stops at `eos_token_id` and llama.cpp at its end-of-generation tokens.
pub fn completion_stop_ids(tok: &Tokenizer, eos_token_id: Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = tok.eot_id().into_iter().chain(eos_token_id).collect();
    ids.dedup();
    ids
}

/// Generates text, calling `on_text` with each piece as soon as it is safe to show (see
/// [`TextOutput`](super::stream::TextOutput)): the prompt runs once into a KV cache, then one
/// token at a time through a [`Decoder`].
pub fn generate_text(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let context = model.cfg.context;
    if prompt.is_empty() {
        return Err(Error::Mismatch("the prompt has no tokens".into()));
    }
    if prompt.len() >= context {
        return Err(Error::Mismatch(format!(
            "the prompt has {} tokens but the model's context is {context}",
            prompt.len(),
        )));
    }
    let mut d = Decoder::new(tok, prompt, opts, context);
    if d.budget() > 0 {
        let (mut cache, mut logits) = model.prefill(prompt)?;
        loop {
            let row: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            if let Some((_, piece)) = d.step(&row)? {
                if !piece.is_empty() {
                    on_text(&piece)?;
                }
            }
            let Some(next) = d.last().filter(|_| d.finished().is_none()) else {
                break;
            };
            let x = Tensor::from_slice(&[next], (1, 1), model.device())?;
            let pos = cache.len();
            logits = model.forward_last(&x, pos, Some(&mut cache))?;
        }
    }
    let rest = d.flush()?;
    if !rest.is_empty() {
        on_text(&rest)?;
    }
    Ok(d.into_generation())
}
