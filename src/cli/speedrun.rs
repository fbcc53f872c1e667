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
}

pub fn run(a: SpeedrunArgs) -> Result<()> {
    let stage = chatforge::speedrun::SftStage {
        steps: a.sft_steps,
        train_per_task: a.sft_train_per_task,
        test_per_task: a.sft_test_per_task,
        chat_data: a.chat_data,
        overrides: a.sft_set,
    };
    let report =
        chatforge::speedrun::speedrun(a.corpus.as_deref(), &a.out, a.vocab_size, &a.set, &stage)?;
    super::output::line(format!("report: {}", report.display()))?;
    Ok(())
}
