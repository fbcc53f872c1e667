//! `chatforge speedrun`: the whole pipeline on a small corpus, and its report.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SpeedrunArgs {
    /// Text corpus (default: tiny Shakespeare, downloaded once into the cache).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Run directory.
    #[arg(long, default_value = "runs/speedrun")]
    pub out: PathBuf,
    /// Vocabulary of the tokenizer trained on the corpus.
    #[arg(long, default_value_t = chatforge::speedrun::SPEEDRUN_VOCAB)]
    pub vocab_size: usize,
    /// Override a config key of the pre-training run (repeatable), e.g. --set train.max_steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Fine-tuning steps on the synthetic chat tasks after pre-training (0 skips the stage).
    #[arg(long, default_value_t = 300)]
    pub sft_steps: usize,
    /// Training conversations per synthetic task.
    #[arg(long, default_value_t = 2000)]
    pub sft_train_per_task: usize,
    /// Held-out questions per synthetic task, scored before and after fine-tuning.
    #[arg(long, default_value_t = 100)]
    pub sft_test_per_task: usize,
    /// Chat files (.jsonl/.json) to fine-tune on together with the synthetic tasks.
    #[arg(long, num_args = 1..)]
    pub chat_data: Vec<PathBuf>,
    /// Override a config key of the fine-tuning run (repeatable), e.g. --sft-set train.lr=5e-4.
    #[arg(long = "sft-set", value_name = "KEY=VALUE")]
    pub sft_set: Vec<String>,
    /// Reinforcement-learning (GRPO) steps on --rl-task after fine-tuning (0 skips the stage).
    #[arg(long, default_value_t = 0)]
    pub rl_steps: usize,
    /// The synthetic task of the RL stage: arithmetic, spelling or count_letters.
    #[arg(long, default_value = "count_letters")]
    pub rl_task: chatforge::config::RlTask,
    /// Override a config key of the RL run (repeatable), e.g. --rl-set rl.group=16.
    #[arg(long = "rl-set", value_name = "KEY=VALUE")]
    pub rl_set: Vec<String>,
}

pub fn run(a: SpeedrunArgs) -> Result<()> {
    let stage = chatforge::speedrun::SftStage {
        steps: a.sft_steps,
        train_per_task: a.sft_train_per_task,
        test_per_task: a.sft_test_per_task,
        chat_data: a.chat_data,
        overrides: a.sft_set,
        rl_steps: a.rl_steps,
        rl_task: a.rl_task,
        rl_overrides: a.rl_set,
    };
    if a.rl_steps > 0 && a.sft_steps == 0 {
        anyhow::bail!("--rl-steps tunes the fine-tuned model: it needs --sft-steps above 0");
    }
    if a.rl_task == chatforge::config::RlTask::Gsm8k {
        anyhow::bail!("--rl-task: the speedrun's RL stage runs a synthetic task (arithmetic, spelling or count_letters)");
    }
    let report =
        chatforge::speedrun::speedrun(a.corpus.as_deref(), &a.out, a.vocab_size, &a.set, &stage)?;
    super::output::line(format!("report: {}", report.display()))?;
    Ok(())
}
