//! `chatforge convert`: write a model as a Hugging Face model directory.

use anyhow::Result;
use chatforge::formats::{save_model_dir, LoadedModel};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// Model directory or .gguf file to read.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory to write (must be new or empty).
    #[arg(long)]
    pub output: PathBuf,
    /// Replace an existing, non-empty --output (only it, once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    chatforge::fsutil::check_output(&a.output, "--output", &[&a.input], a.force)?;
    let m = LoadedModel::load(&a.input, &candle_core::Device::Cpu)?;
    save_model_dir(&a.output, &m.cfg, &m.f32_weights()?, m.tokenizer.as_ref())?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
