//! `chatforge rl`: reinforcement learning with verifiable rewards (GRPO) on a task, every weight
//! or LoRA adapters, on the fine-tuning loop.

use super::train::{fine_tune, put, tune_defaults, TuneArgs};
use anyhow::Result;
use chatforge::config::{Objective, RlTask, RunConfig};
use chatforge::dist::Collective;
use clap::Args;

#[derive(Args)]
pub struct RlArgs {
    #[command(flatten)]
    tune: TuneArgs,
    /// gsm8k (problems from --data: question / answer ending "#### N"), or a synthetic task that
    /// needs no data: arithmetic, spelling, count_letters.
    #[arg(long)]
    task: Option<RlTask>,
    /// Replies sampled per prompt; their rewards are compared within the group.
    #[arg(long)]
    group: Option<usize>,
    /// Prompts per optimizer step.
    #[arg(long)]
    prompts_per_step: Option<usize>,
    /// The longest reply, in tokens.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Weight of the KL penalty to the reference (the starting model; with LoRA its base).
    #[arg(long)]
    kl: Option<f64>,
    /// Sampling temperature of the replies.
    #[arg(long)]
    temperature: Option<f64>,
    /// PPO clipping range of the probability ratio.
    #[arg(long)]
    clip: Option<f64>,
    /// Optimizer steps on each batch of replies (above 1 the batch is reused, clipped).
    #[arg(long)]
    iterations: Option<usize>,
    /// Held-out problems for pass@1 at each validation.
    #[arg(long)]
    eval_problems: Option<usize>,
}

/// Reinforcement learning's defaults, below the config file: rows of 8 up to 1024 tokens, lr
/// 1e-5 with LoRA, 1e-6 (TRL's) for every weight, pass@1 every 20 steps.
fn rl_defaults(lora: bool) -> Vec<String> {
    let mut d = tune_defaults(if lora { 1e-5 } else { 1e-6 }, 8, 1024);
    d.extend([
        "eval.every=20".to_string(),
        "checkpoint.every=20".into(),
        "train.log_every=1".into(),
        "train.warmup_steps=0".into(),
        "train.max_steps=100".into(),
    ]);
    d
}

pub fn run(a: RlArgs, coll: &dyn Collective) -> Result<()> {
    let flags = |cfg: &mut RunConfig| {
        let rl = &mut cfg.rl;
        put(&mut rl.task, &a.task);
        put(&mut rl.group, &a.group);
        put(&mut rl.prompts_per_step, &a.prompts_per_step);
        put(&mut rl.max_new_tokens, &a.max_new_tokens);
        put(&mut rl.kl, &a.kl);
        put(&mut rl.temperature, &a.temperature);
        put(&mut rl.clip, &a.clip);
        put(&mut rl.iterations, &a.iterations);
        put(&mut rl.eval_problems, &a.eval_problems);
    };
    fine_tune(&a.tune, Objective::Rl, rl_defaults, &flags, coll)
}
