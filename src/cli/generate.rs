//! `chatforge generate`: continue a prompt (or answer it as a chat message), streamed to stdout.

use super::sampling::SamplingArgs;
use anyhow::{Context, Result};
use chatforge::formats::LoadedModel;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt ("-" reads it from stdin).
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System prompt (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    use std::io::Write;
    let mut opts = a.sampling.options()?;
    let device = a.sampling.device.open()?;
    let m = LoadedModel::load(&a.model, &device)?;
    let tok = m.tokenizer(&a.model)?;
    let model = m.transformer_with(a.sampling.weights)?;
    let prompt = if a.prompt == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?
    } else {
        a.prompt.clone()
    };
    let t0 = std::time::Instant::now();
    let mut first: Option<f64> = None;
    let mut print = |piece: &str| -> chatforge::Result<()> {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        let mut out = std::io::stdout().lock();
        out.write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| chatforge::Error::io("<stdout>", e))
    };
    let g = if a.chat {
        let chat = chatforge::chat::ChatModel::new(&model, tok)?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(chatforge::chat_template::Message::new("system", s));
        }
        msgs.push(chatforge::chat_template::Message::new("user", &prompt));
        chat.reply(&msgs, &opts, &mut print)?
    } else {
        let ids = tok.encode(&prompt)?;
        opts.stop_ids.extend(chatforge::infer::completion_stop_ids(
            tok,
            m.cfg.eos_token_id,
        ));
        chatforge::infer::generate_text(&model, tok, &ids, &opts, &mut print)?
    };
    super::output::line("")?;
    let secs = t0.elapsed().as_secs_f64();
    let ttft = first.unwrap_or(secs);
    eprintln!(
        "[{} prompt tokens, first token after {:.2}s | {} new tokens, {:.1} tok/s decoding | finish: {:?}]",
        g.prompt_tokens,
        ttft,
        g.ids.len(),
        g.ids.len().saturating_sub(1) as f64 / (secs - ttft).max(1e-9),
        g.finish_reason
    );
    Ok(())
}
