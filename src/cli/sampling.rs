//! The sampling flags `generate` and `chat` share, checked into generation options, and how
//! they run the model (device, weights).

use anyhow::{bail, Result};
use chatforge::infer::SamplingParams;
use clap::Args;

/// The defaults every sampling flag starts from (the server's too).
fn defaults() -> SamplingParams {
    SamplingParams::default()
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = defaults().temperature)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = defaults().top_k)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[arg(long, default_value_t = defaults().top_p)]
    pub top_p: f64,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    #[arg(long, default_value_t = defaults().min_p)]
    pub min_p: f64,
    /// Above 1 discourages tokens already in the context (1 = off).
    #[arg(long, default_value_t = defaults().repetition_penalty)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Stop at this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: chatforge::DeviceChoice,
    /// How the linear layers' weights are held: auto (a GGUF file's Q4_1/Q8_0 tensors as they
    /// lie, times 8-bit activations as llama.cpp multiplies them; other quantized files as 8-bit
    /// copies; f32 otherwise), f32 (exact, as transformers computes), q8_0 or q4_1.
    #[arg(long, default_value = "auto")]
    pub weights: chatforge::formats::WeightFormat,
}

impl SamplingArgs {
    /// The generation options, with every sampling value checked (`--temperature nan` and
    /// `--repetition-penalty 0` are errors naming the flag).
    pub fn options(&self) -> Result<chatforge::infer::GenerateOptions> {
        let opts = chatforge::infer::GenerateOptions {
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_ids: vec![],
            stop_strings: self.stop.clone(),
        };
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        if let Err((field, must)) = opts.sampling.validate() {
            bail!("--{} must be {must}", field.replace('_', "-"));
        }
        Ok(opts)
    }
}
