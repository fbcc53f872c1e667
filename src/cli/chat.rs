//! `chatforge chat`: talk to a model in the terminal.

use super::sampling::SamplingArgs;
use anyhow::Result;
use chatforge::formats::LoadedModel;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ChatArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let opts = a.sampling.options()?;
    let device = a.sampling.device.open()?;
    let m = LoadedModel::load(&a.model, &device)?;
    let model = m.transformer_with(a.sampling.weights)?;
    let chat = chatforge::chat::ChatModel::new(&model, m.tokenizer(&a.model)?)?;
    let stdin = std::io::stdin();
    chatforge::chat::repl(
        &chat,
        a.system.as_deref(),
        &opts,
        stdin.lock(),
        std::io::stdout(),
    )?;
    Ok(())
}
