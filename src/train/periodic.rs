//! What the loop does between optimizer steps: validation, samples, checkpoints, the metrics log,
//! and asking the ranks whether a signal asked the run to stop.

use super::checkpoint::{save_checkpoint, CheckpointWeights};
use super::run::Run;
use super::source::Source;
use super::start::LoraRun;
use crate::error::Result;
use std::path::PathBuf;

impl Run<'_> {
    /// Validation loss and (for text) bits per byte over the fixed validation set.
    pub(super) fn validate(&self) -> Result<Option<super::source::Validation>> {
        if self.cfg.is_rl() {
            return self.validate_rl();
        }
        let windows = (self.cfg.eval.tokens / self.cfg.train.context).max(1);
        // Preference pairs are scored by the inference kernels (their loss needs no gradient).
        let frozen = match self.cfg.is_dpo() {
            true => Some(super::start::frozen_model(
                &self.state.model,
                &self.params,
                self.lora.as_ref(),
            )?),
            false => None,
        };
        self.source.validate(
            frozen.as_ref().unwrap_or(&self.model),
            windows,
            self.cfg.train.batch_size,
            &self.token_bytes,
            &self.cfg.dpo,
        )
    }

    pub(super) fn sample(&self) -> Result<Option<String>> {
        let Some(tok) = &self.tokenizer else {
            return Ok(None);
        };
        if let Source::Chat { format, sample, .. } | Source::Pairs { format, sample, .. } =
            &self.source
        {
            return self.sample_reply(tok, format, sample).map(Some);
        }
        if let Source::Rollouts(r) = &self.source {
            let Some(p) = r.val.first().or(r.problems.first()) else {
                return Ok(None);
            };
            let question = [crate::chat_template::Message::new("user", &p.question)];
            return self.sample_reply(tok, &r.format, &question).map(Some);
        }
        let mut prompt = if self.cfg.eval.sample_prompt.is_empty() {
            vec![]
        } else {
            tok.encode(&self.cfg.eval.sample_prompt)?
        };
        if prompt.is_empty() {
            prompt.push(tok.eot_id().unwrap_or(0));
        }
        // A prompt longer than the context keeps its end.
        let keep = prompt
            .len()
            .min(self.model.cfg.context.saturating_sub(1))
            .max(1);
        let prompt = &prompt[prompt.len() - keep..];
        let opts = crate::infer::GenerateOptions {
            max_new_tokens: self.cfg.eval.sample_tokens,
            sampling: self.sample_params(),
            stop_ids: tok.eot_id().into_iter().collect(),
            stop_strings: vec![],
        };
        let g = crate::infer::generate_text(&self.model, tok, prompt, &opts, |_| Ok(()))?;
        Ok(Some(format!("{}{}", self.cfg.eval.sample_prompt, g.text)))
    }

    /// The sampling of the run's samples: `eval.sample_temperature`, a seed of the run and step.
    fn sample_params(&self) -> crate::infer::SamplingParams {
        crate::infer::SamplingParams {
            temperature: self.cfg.eval.sample_temperature,
            seed: self.state.seed.wrapping_add(self.state.step as u64),
            ..Default::default()
        }
    }

    /// A fine-tuned model's reply to the sample conversation (greedy unless a temperature is set).
    fn sample_reply(
        &self,
        tok: &crate::tokenizer::Tokenizer,
        format: &crate::chat_template::ChatFormat,
        messages: &[crate::chat_template::Message],
    ) -> Result<String> {
        let prompt = format.prompt_ids(tok, messages)?;
        let opts = crate::infer::GenerateOptions {
            max_new_tokens: self.cfg.eval.sample_tokens,
            sampling: self.sample_params(),
            stop_ids: format.stop_ids.clone(),
            stop_strings: vec![],
        };
        let g = crate::infer::generate_text(&self.model, tok, &prompt, &opts, |_| Ok(()))?;
        let user = messages.last().map(|m| m.content.as_str()).unwrap_or("");
        Ok(format!("user: {user}\nassistant: {}", g.text))
    }

    /// Whether a signal asked the run to stop, agreed by all ranks (each may have seen it at a
    /// different step; they stop together after the first step any of them saw it at).
    pub(super) fn stop_requested(&self) -> bool {
        let mut asked = [f64::from(u8::from(super::interrupt::requested()))];
        if self.coll.communicates() {
            self.coll.all_reduce_sum_f64(&mut asked);
        }
        asked[0] > 0.0
    }

    /// Rank 0 writes the checkpoint; the others wait for it.
    pub(super) fn checkpoint(&self) -> Result<PathBuf> {
        if !self.coll.is_lead() {
            self.coll.barrier();
            return Ok(super::checkpoint::checkpoints_dir(&self.run_dir)
                .join(format!("step_{:06}", self.state.step)));
        }
        let weights = match &self.lora {
            None => CheckpointWeights::Model(self.params.tensors()),
            Some(l) => CheckpointWeights::Adapter {
                config_json: self.adapter_config_json(l)?,
                weights: self.params.tensors(),
            },
        };
        let dir = save_checkpoint(
            &self.run_dir,
            &self.state,
            &weights,
            self.tokenizer.as_ref(),
            &self.opt,
        )?;
        self.coll.barrier();
        Ok(dir)
    }

    /// Appends a metrics record (rank 0).
    pub(super) fn log(&self, record: serde_json::Value) -> Result<()> {
        match &self.metrics {
            Some(m) => m.append(record),
            None => Ok(()),
        }
    }

    fn adapter_config_json(&self, l: &LoraRun) -> Result<String> {
        let targets = crate::model::lora::resolve_targets(&self.state.model, &l.cfg.targets)?;
        Ok(crate::formats::peft::peft_config_json(
            &self.state.model,
            &l.cfg,
            &targets,
            &l.base_path,
        ))
    }
}
