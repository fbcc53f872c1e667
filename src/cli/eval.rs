//! `chatforge eval`: score a model on a task.

use anyhow::Result;
use chatforge::eval::{EvalOptions, EvalTask};
use chatforge::formats::LoadedModel;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Task: ppl (loss and bits per byte of a text file), hellaswag, arc, lambada, gsm8k, chat
    /// (exact match of the last assistant reply of each conversation in a chat file), or
    /// crows_pairs (bias: how often the more stereotypical sentence of a CrowS-Pairs pair is the
    /// more likely, overall and by bias type).
    #[arg(long, default_value = "ppl")]
    pub task: EvalTask,
    /// Score only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// GSM8K: longest answer in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// The task's data file.
    #[arg(long)]
    pub data: PathBuf,
    /// Windows scored together.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: chatforge::DeviceChoice,
    /// How the linear layers' weights are held: f32 (the default: scores as transformers computes
    /// them), or as generate, chat and serve hold them (auto: a GGUF file's 4-bit blocks times
    /// 8-bit activations), q8_0 or q4_1, to see what quantization costs on the task.
    #[arg(long, default_value = "f32")]
    pub weights: chatforge::formats::WeightFormat,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.open()?;
    let m = LoadedModel::load(&a.model, &device)?;
    let tok = m.tokenizer(&a.model)?;
    let model = m.transformer_with(a.weights)?;
    let t0 = std::time::Instant::now();
    let opts = EvalOptions {
        data: a.data,
        limit: a.limit,
        max_tokens: a.max_tokens,
        batch_size: a.batch_size,
    };
    let (json, line) = chatforge::eval::run_task(a.task, &model, tok, &opts)?;
    if a.json {
        super::output::line(json)?;
    } else {
        super::output::line(format!("{line} ({:.1}s)", t0.elapsed().as_secs_f64()))?;
    }
    Ok(())
}
