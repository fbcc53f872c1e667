//! A GRPO step on the training loop: sample each prompt's group of replies with the current
//! policy (the inference kernels over its detached weights, all replies decoded together),
//! reward them with the task's verifier, and take the gradient of the clipped surrogate
//! (`grpo::objective`) over the replies in micro-batches of `train.batch_size` rows; and the
//! held-out pass@1 (greedy) that validation reports.

use super::gradients::StepGradients;
use super::grpo::{advantages, objective, GrpoRows, GrpoStats};
use super::rl_source::{reply_row, reward, RolloutBatch, RolloutStats, Rollouts};
use super::run::Run;
use super::source::{Source, Validation};
use crate::chat_template::Message;
use crate::data::sft::{pad_batch, Example};
use crate::error::{Error, Result};
use crate::infer::{generate_groups, FinishReason, GenerateOptions, SamplingParams};
use crate::model::Transformer;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Held-out prompts decoded together during validation.
const VAL_BATCH: usize = 16;

/// Each row's values `per_row` (a value per input position) laid out as a padded batch of
/// `len` positions (0 in the padding).
fn padded(per_row: &[Vec<f64>], len: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(per_row.len() * len);
    for r in per_row {
        out.extend_from_slice(r);
        out.extend(std::iter::repeat_n(0.0, len - r.len()));
    }
    out
}

/// The per-position log-probabilities of `rows` under `model` (no gradient), row by row.
fn row_logps(
    model: &Transformer,
    rows: &[Example],
    batch: usize,
    pad: u32,
) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = pad_batch(&refs, pad);
        let (x, y) = super::dpo::batch_tensors(&b, model.device())?;
        let nll = model
            .token_nll(&x, &y)?
            .detach()
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (r, row) in chunk.iter().zip(nll.chunks_exact(b.len)) {
            out.push(
                row[..r.inputs.len()]
                    .iter()
                    .map(|&v| -f64::from(v))
                    .collect(),
            );
        }
    }
    Ok(out)
}

impl Run<'_> {
    fn rollouts(&self) -> Result<&Rollouts> {
        match &self.source {
            Source::Rollouts(r) => Ok(r.as_ref()),
            _ => Err(Error::Training("not a reinforcement-learning run".into())),
        }
    }

    fn rollouts_mut(&mut self) -> Result<&mut Rollouts> {
        match &mut self.source {
            Source::Rollouts(r) => Ok(r.as_mut()),
            _ => Err(Error::Training("not a reinforcement-learning run".into())),
        }
    }

    /// The current policy over detached weights: it samples with the inference kernels.
    fn policy(&self) -> Result<Transformer> {
        super::start::frozen_model(&self.state.model, &self.params, self.lora.as_ref())
    }

    /// The chat prompt of each problem `idx` names (of `val` or the training problems).
    fn prompts(&self, idx: &[usize], held_out: bool) -> Result<Vec<Vec<u32>>> {
        let r = self.rollouts()?;
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::Config("reinforcement learning needs the model's tokenizer".into())
        })?;
        let set = if held_out { &r.val } else { &r.problems };
        idx.iter()
            .map(|&i| {
                r.format
                    .prompt_ids(tok, &[Message::new("user", &set[i].question)])
            })
            .collect()
    }

    /// Samples the groups of the next batch's prompts and rewards them.
    fn roll_out(&mut self) -> Result<RolloutBatch> {
        let (index, idx) = {
            let r = self.rollouts_mut()?;
            (r.sampler.position, r.sampler.next_indices())
        };
        let prompts = self.prompts(&idx, false)?;
        let rl = &self.cfg.rl;
        let r = self.rollouts()?;
        let tok = self.tokenizer.as_ref().expect("prompts() checked it");
        let opts = GenerateOptions {
            max_new_tokens: rl.max_new_tokens,
            sampling: SamplingParams {
                temperature: rl.temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                repetition_penalty: 1.0,
                seed: crate::infer::group::sequence_seed(self.cfg.train.seed, index as usize),
            },
            stop_ids: r.format.stop_ids.clone(),
            stop_strings: vec![],
        };
        let context = self.cfg.train.context;
        let gens = generate_groups(&self.policy()?, tok, &prompts, rl.group, &opts, context)?;
        let g = rl.group;
        let mut rewards = Vec::with_capacity(gens.len());
        let mut rows = Vec::with_capacity(gens.len());
        let mut replies = Vec::with_capacity(gens.len());
        for (k, gen) in gens.iter().enumerate() {
            let p = &r.problems[idx[k / g]];
            let v = reward(r.task, &gen.text, &p.answer);
            if !v.is_finite() {
                return Err(Error::Training(format!(
                    "the {} verifier gave a reward of {v} to a reply",
                    r.task
                )));
            }
            rewards.push(v);
            replies.push((gen.ids.len(), gen.finish_reason == FinishReason::Length));
            rows.push(reply_row(&prompts[k / g], &gen.ids, gen.stop_token));
        }
        let reference = match &r.reference {
            Some(m) => Some(row_logps(m, &rows, self.cfg.train.batch_size, r.pad)?),
            None => None,
        };
        Ok(RolloutBatch {
            advantages: advantages(&rewards, g),
            rows,
            old: None,
            reference,
            stats: RolloutStats::of(&rewards, g, &replies),
            uses_left: r.uses_of_new_batch(),
        })
    }

    /// One GRPO step's gradients: a new batch of replies (or the one being reused), its
    /// surrogate's gradient over micro-batches of `train.batch_size` rows, summed; in a
    /// data-parallel run averaged over the ranks (each samples its own prompts; the loss is the
    /// mean over every rank's reply tokens, as TRL's).
    pub(super) fn rl_step_gradients(&mut self) -> Result<StepGradients> {
        let mut batch = match self.rollouts_mut()?.pending.take() {
            Some(b) => b,
            None => self.roll_out()?,
        };
        self.profile.mark("sampling")?;
        let mut step_tokens = batch.rows.iter().map(|r| r.trained()).sum::<usize>() as f64;
        if self.coll.communicates() {
            // Each rank's share of the mean over all ranks' tokens (the gradients are averaged).
            let mut all = [step_tokens];
            self.coll.all_reduce_sum_f64(&mut all);
            step_tokens = all[0] / self.coll.world() as f64;
        }
        let (mb, pad) = (self.cfg.train.batch_size.max(1), self.rollouts()?.pad);
        let keep_old = batch.old.is_none() && batch.uses_left > 1;
        let mut old = Vec::new();
        let mut grads = BTreeMap::new();
        let (mut stats, mut tokens) = (GrpoStats::default(), 0u64);
        self.model.set_training(true);
        for (c, chunk) in batch.rows.chunks(mb).enumerate() {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = pad_batch(&refs, pad);
            let (x, y) = super::dpo::batch_tensors(&b, &self.device)?;
            let span = c * mb..c * mb + chunk.len();
            let rows = GrpoRows {
                advantages: batch.advantages[span.clone()].to_vec(),
                old: batch.old.as_ref().map(|o| padded(&o[span.clone()], b.len)),
                reference: batch.reference.as_ref().map(|o| padded(&o[span], b.len)),
                step_tokens,
            };
            let (surrogate, s, logps) = objective(&self.model, &x, &y, &rows, &self.cfg.rl)?;
            self.profile.mark("forward")?;
            if keep_old {
                for (r, row) in chunk.iter().zip(logps.chunks_exact(b.len)) {
                    old.push(row[..r.inputs.len()].to_vec());
                }
            }
            stats.add(&s);
            tokens += (b.batch * b.len) as u64;
            let store = self.model.backward(&surrogate)?;
            self.add_gradients(store, &mut grads)?;
            self.profile.mark("backward")?;
        }
        self.model.set_training(false);
        let rollout = batch.stats;
        let with_kl = batch.reference.is_some();
        batch.uses_left -= 1;
        if keep_old {
            batch.old = Some(old);
        }
        let r = self.rollouts_mut()?;
        r.steps += 1;
        if batch.uses_left > 0 {
            r.pending = Some(batch);
        }
        if !self.coll.communicates() {
            let mut extra = rollout.means();
            extra.extend(stats.means(with_kl));
            return Ok(StepGradients {
                loss: stats.loss,
                grads,
                tokens,
                pairs: None,
                extra,
            });
        }
        let world = self.coll.world() as f64;
        let mut totals = vec![stats.loss, tokens as f64];
        totals.extend(stats.to_vec());
        totals.extend(rollout.0);
        let grads = self.average_gradients(grads, &mut totals)?;
        self.profile.mark("all-reduce")?;
        let mut sums = [0.0; 7];
        sums.copy_from_slice(&totals[6..13]);
        let mut extra = RolloutStats(sums).means();
        extra.extend(GrpoStats::from_slice(&totals[2..6]).means(with_kl));
        Ok(StepGradients {
            loss: totals[0] / world,
            grads,
            tokens: totals[1] as u64,
            pairs: None,
            extra,
        })
    }

    /// Held-out pass@1: each held-out problem's greedy reply through the verifier, their mean
    /// (the validation "loss" is 1 − pass@1), and the replies' mean length.
    pub(super) fn validate_rl(&self) -> Result<Option<Validation>> {
        let r = self.rollouts()?;
        if r.val.is_empty() {
            return Ok(None);
        }
        let tok = self
            .tokenizer
            .as_ref()
            .expect("an RL run has its tokenizer");
        let policy = self.policy()?;
        let opts = GenerateOptions {
            max_new_tokens: self.cfg.rl.max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop_ids: r.format.stop_ids.clone(),
            stop_strings: vec![],
        };
        let (mut hits, mut length) = (0.0, 0usize);
        let all: Vec<usize> = (0..r.val.len()).collect();
        for idx in all.chunks(VAL_BATCH) {
            let prompts = self.prompts(idx, true)?;
            for (gen, &i) in
                generate_groups(&policy, tok, &prompts, 1, &opts, self.cfg.train.context)?
                    .iter()
                    .zip(idx)
            {
                hits += reward(r.task, &gen.text, &r.val[i].answer);
                length += gen.ids.len();
            }
        }
        let n = r.val.len() as f64;
        let mut extra = Map::new();
        extra.insert("pass@1".into(), Value::from(hits / n));
        extra.insert(
            "completions/mean_length".into(),
            Value::from(length as f64 / n),
        );
        Ok(Some(Validation {
            loss: 1.0 - hits / n,
            bpb: None,
            extra,
        }))
    }
}
