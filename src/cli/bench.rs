//! `chatforge bench`: prompt-processing and generation speed, as llama-bench measures them.

use anyhow::Result;
use chatforge::formats::{LoadedModel, WeightFormat};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt length (synthetic token ids, see `infer::speed`).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions after one warm-up run; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value = "cpu")]
    pub device: chatforge::DeviceChoice,
    /// How the linear layers' weights are held, as generate, chat and serve take it: auto (a GGUF
    /// file's Q4_1/Q8_0 tensors as they lie, times 8-bit activations; other quantized files as
    /// 8-bit copies; f32 otherwise), f32, q8_0 or q4_1.
    #[arg(long, default_value = "auto")]
    pub weights: WeightFormat,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = a.device.open()?;
    let m = LoadedModel::load(&a.model, &device)?;
    let model = m.transformer_with(a.weights)?;
    let r = chatforge::infer::speed::measure(&model, a.prompt_tokens, a.new_tokens, a.runs)?;
    if a.json {
        super::output::line(serde_json::to_string(&r)?)?;
        return Ok(());
    }
    super::output::line(format!(
        "{}: prompt processing (pp{}) {:.1} tok/s | generation (tg{}) {:.1} tok/s | median of {} runs after a warm-up, {} threads",
        a.model.display(),
        r.prompt_tokens,
        r.prompt_tokens_per_sec,
        r.new_tokens,
        r.decode_tokens_per_sec,
        r.runs,
        rayon::current_num_threads()
    ))?;
    Ok(())
}
