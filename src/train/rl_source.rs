//! Reinforcement learning's source: a task's problems (GSM8K files, or a synthetic task's
//! generated questions), the held-out ones its pass@1 is measured on, the verifier that rewards a
//! reply, and the batch of sampled replies a GRPO step learns from (kept for `rl.iterations`
//! steps).

use crate::chat_template::{ChatFormat, Message};
use crate::config::{Precision, RlTask, RunConfig};
use crate::data::sft::{EpochSampler, Example};
use crate::data::synthetic::{self, SyntheticTask};
use crate::error::{Error, Result};
use crate::eval::tasks::{final_number, gsm8k_problems, same_number};
use crate::model::{ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;
use serde_json::{Map, Value};

/// A question and the answer its verifier checks a reply against.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub question: String,
    pub answer: String,
}

/// The reward of `reply` to a problem of `task` whose answer is `answer`: 1 where the verifier
/// accepts it, else 0. GSM8K, arithmetic and count_letters: the reply's final number (the one
/// after `####`, else its last) equals the answer, so "The letter r appears 3 times." counts;
/// spelling: the dashed spelling is the reply or one of its words ("g-a-r-d-e-n.", "It is
/// g-a-r-d-e-n"), and no other word of the reply is a different spelling.
pub fn reward(task: RlTask, reply: &str, answer: &str) -> f64 {
    let ok = match task {
        RlTask::Spelling => {
            let words: Vec<&str> = reply
                .split(|c: char| c.is_whitespace() || "\"'.,;:!?()".contains(c))
                .filter(|w| w.contains('-'))
                .collect();
            words.contains(&answer) && words.iter().all(|w| *w == answer)
        }
        _ => same_number(final_number(reply).as_deref(), answer),
    };
    f64::from(u8::from(ok))
}

fn synthetic_task(task: RlTask) -> Option<SyntheticTask> {
    match task {
        RlTask::Gsm8k => None,
        RlTask::Arithmetic => Some(SyntheticTask::Arithmetic),
        RlTask::Spelling => Some(SyntheticTask::Spelling),
        RlTask::CountLetters => Some(SyntheticTask::CountLetters),
    }
}

/// The run's problems: (training, held out). GSM8K reads `sft.data` and holds out
/// `rl.eval_problems` of them (seeded); a synthetic task generates `rl.train_problems` and
/// `rl.eval_problems` that share no question.
pub fn load_problems(cfg: &RunConfig) -> Result<(Vec<Problem>, Vec<Problem>)> {
    let rl = &cfg.rl;
    let seed = cfg.train.seed;
    if let Some(t) = synthetic_task(rl.task) {
        if !cfg.sft.data.is_empty() {
            return Err(Error::Config(format!(
                "rl.task {} generates its own problems; drop --data (sft.data), or use rl.task = gsm8k for files",
                rl.task
            )));
        }
        let (train, test) = synthetic::generate(t, rl.train_problems, rl.eval_problems, seed);
        let problem = |c: crate::data::chat::Conversation| Problem {
            question: c.messages[0].content.clone(),
            answer: c.messages[1].content.clone(),
        };
        return Ok((
            train.into_iter().map(problem).collect(),
            test.into_iter().map(problem).collect(),
        ));
    }
    if cfg.sft.data.is_empty() {
        return Err(Error::Config(
            "rl.task gsm8k needs problems: --data FILE.jsonl (question / answer ending \"#### N\", as GSM8K's)".into(),
        ));
    }
    let mut all = Vec::new();
    for f in &cfg.sft.data {
        let local = crate::formats::hub::resolve_data_file(f)?;
        for (question, answer) in gsm8k_problems(&local, None)? {
            all.push(Problem { question, answer });
        }
    }
    let n = all.len();
    let held = rl.eval_problems.min(n.saturating_sub(1));
    let (train, val) =
        crate::data::sft::split_held_out(all, held as f64 / n.max(1) as f64, seed ^ 0x51);
    Ok((train, val))
}

/// A GRPO step's batch: each prompt's group of replies as training rows (targets on the reply
/// and its stop token), their advantages, and what later steps on the same batch need.
pub struct RolloutBatch {
    pub rows: Vec<Example>,
    pub advantages: Vec<f64>,
    /// Per row and position, the sampling policy's log-probabilities (after the first step).
    pub old: Option<Vec<Vec<f64>>>,
    /// Per row and position, the reference's (with a KL penalty).
    pub reference: Option<Vec<Vec<f64>>>,
    /// Its reward and reply metrics.
    pub stats: RolloutStats,
    /// Steps still to take on it.
    pub uses_left: usize,
}

/// Sums over a batch's replies for TRL's reward metrics (summed over the ranks in a data-parallel
/// run): rewards, their groups' standard deviations, groups whose rewards are all equal, groups,
/// reply tokens, replies the token budget cut, replies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutStats(pub [f64; 7]);

impl RolloutStats {
    /// The stats of `rewards` in groups of `group`, with each reply's length and whether the
    /// budget cut it.
    pub fn of(rewards: &[f64], group: usize, replies: &[(usize, bool)]) -> Self {
        let stds: Vec<f64> = rewards
            .chunks(group.max(1))
            .map(|c| super::grpo::mean_std(c).1)
            .collect();
        RolloutStats([
            rewards.iter().sum(),
            stds.iter().sum(),
            stds.iter().filter(|&&s| s == 0.0).count() as f64,
            stds.len() as f64,
            replies.iter().map(|r| r.0 as f64).sum(),
            replies.iter().filter(|r| r.1).count() as f64,
            rewards.len() as f64,
        ])
    }

    /// TRL's `reward`, `reward_std`, `frac_reward_zero_std`, `completions/mean_length`,
    /// `completions/clipped_ratio`.
    pub fn means(&self) -> Map<String, Value> {
        let [reward, std, zero, groups, length, cut, n] = self.0;
        let (n, groups) = (n.max(1.0), groups.max(1.0));
        [
            ("reward", reward / n),
            ("reward_std", std / groups),
            ("frac_reward_zero_std", zero / groups),
            ("completions/mean_length", length / n),
            ("completions/clipped_ratio", cut / n),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
    }
}

/// The RL source's state.
pub struct Rollouts {
    pub task: RlTask,
    pub problems: Vec<Problem>,
    pub val: Vec<Problem>,
    /// Draws `rl.prompts_per_step` problems per batch.
    pub sampler: EpochSampler,
    pub format: ChatFormat,
    pub pad: u32,
    /// Steps taken (the checkpointed position).
    pub steps: u64,
    pub iterations: usize,
    pub pending: Option<RolloutBatch>,
    /// The model the KL penalty is measured against (only with `rl.kl` > 0).
    pub reference: Option<Transformer>,
}

impl Rollouts {
    /// Continues at step `p`: the batch of step p is drawn again (a run resumed in the middle of
    /// a reused batch samples that batch's prompts anew).
    pub fn set_position(&mut self, p: u64) {
        self.steps = p;
        self.sampler.position = p / self.iterations as u64;
        self.pending = None;
    }

    /// Steps a new batch serves: `iterations`, fewer when resumed inside one.
    pub fn uses_of_new_batch(&self) -> usize {
        self.iterations - (self.steps % self.iterations as u64) as usize
    }
}

/// The RL source: the task's problems (prompts that leave no room for a reply dropped), ready to
/// be drawn `rl.prompts_per_step` at a time by each rank.
pub(super) fn open_problems(
    cfg: &RunConfig,
    model: &ModelConfig,
    tok: &Tokenizer,
    rank: usize,
    world: usize,
) -> Result<Rollouts> {
    if cfg.train.dtype == Precision::Bf16 {
        return Err(Error::Config(
            "rl trains in f32 for now: drop train.dtype = \"bf16\"".into(),
        ));
    }
    if cfg.train.batch_tokens > 0 || cfg.train.total_tokens > 0 {
        return Err(Error::Config(
            "rl counts its steps in prompts (rl.prompts_per_step, train.max_steps): drop train.batch_tokens and train.total_tokens".into(),
        ));
    }
    let format = ChatFormat::new(tok, model.eos_token_id)?;
    let (train, val) = load_problems(cfg)?;
    let context = cfg.train.context.min(model.context);
    let fitting = |all: Vec<Problem>| -> Result<(Vec<Problem>, usize)> {
        let (mut kept, mut dropped) = (Vec::new(), 0);
        for p in all {
            let ids = format.prompt_ids(tok, &[Message::new("user", &p.question)])?;
            match ids.len() + 1 < context {
                true => kept.push(p),
                false => dropped += 1,
            }
        }
        Ok((kept, dropped))
    };
    let (kept, dropped) = fitting(train)?;
    let (val, val_dropped) = fitting(val)?;
    let dropped = dropped + val_dropped;
    if kept.is_empty() {
        return Err(Error::Config(format!(
            "no {} problem's prompt fits in the context of {context} tokens with room for a reply",
            cfg.rl.task
        )));
    }
    if rank == 0 {
        eprintln!(
            "rl task {}: {} training problems, {} held out for pass@1 | {} replies per prompt, {} prompts per step, up to {} tokens each",
            cfg.rl.task,
            kept.len(),
            val.len(),
            cfg.rl.group,
            cfg.rl.prompts_per_step,
            cfg.rl.max_new_tokens
        );
        if dropped > 0 {
            eprintln!("note: {dropped} problems were skipped: their prompt leaves no room for a reply in {context} tokens");
        }
    }
    let sampler = EpochSampler::new(
        kept.len(),
        cfg.rl.prompts_per_step,
        cfg.train.seed,
        rank,
        world,
    );
    Ok(Rollouts {
        task: cfg.rl.task,
        problems: kept,
        val,
        sampler,
        format,
        pad: tok.eot_id().unwrap_or(0),
        steps: 0,
        iterations: cfg.rl.iterations,
        pending: None,
        reference: None,
    })
}

/// The model the KL penalty is measured against: the frozen base (LoRA), else the model the run
/// started from (`model.init_from`, read again: the policy's weights move).
pub(super) fn kl_reference(
    cfg: &RunConfig,
    model: &ModelConfig,
    lora: Option<&super::start::LoraRun>,
    device: &candle_core::Device,
) -> Result<Transformer> {
    if let Some(l) = lora {
        return Transformer::new(model, &l.base);
    }
    let name = &cfg.model.init_from;
    let loaded = crate::formats::LoadedModel::load(std::path::Path::new(name), device)?;
    if loaded.cfg.vocab_size != model.vocab_size {
        return Err(Error::Mismatch(format!(
            "{name}: the KL reference has a vocabulary of {} tokens, the policy {}",
            loaded.cfg.vocab_size, model.vocab_size
        )));
    }
    loaded.transformer()
}

/// A training row of prompt + reply (+ the stop token that ended it): targets on the reply only.
pub fn reply_row(prompt: &[u32], reply: &[u32], stop: Option<u32>) -> Example {
    let full: Vec<u32> = prompt.iter().chain(reply).copied().chain(stop).collect();
    let targets = (1..full.len())
        .map(|j| match j >= prompt.len() {
            true => i64::from(full[j]),
            false => crate::ops::loss::IGNORE_INDEX,
        })
        .collect();
    Example {
        inputs: full[..full.len() - 1].to_vec(),
        targets,
    }
}
