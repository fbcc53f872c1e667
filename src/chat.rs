//! The terminal chat: a conversation rendered with the model's chat template, replies streamed as
//! they are generated, and `/reset`, `/system TEXT`, `/save FILE`, `/quit` commands.

use crate::chat_template::{ChatFormat, Message};
use crate::error::{Error, Result};
use crate::infer::{generate_text, GenerateOptions};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::io::{BufRead, Write};
use std::path::Path;

/// A model with its tokenizer and chat format, ready to answer conversations.
pub struct ChatModel<'a> {
    pub model: &'a Transformer,
    pub tok: &'a Tokenizer,
    pub format: ChatFormat,
}

impl<'a> ChatModel<'a> {
    pub fn new(model: &'a Transformer, tok: &'a Tokenizer) -> Result<Self> {
        let format = ChatFormat::new(tok, model.cfg.eos_token_id)?;
        Ok(ChatModel { model, tok, format })
    }

    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.format.prompt_ids(self.tok, messages)
    }

    /// Generates the assistant's reply to `messages`, streaming pieces to `on_text`.
    pub fn reply(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> Result<()>,
    ) -> Result<crate::infer::Generation> {
        let ids = self.prompt_ids(messages)?;
        let mut opts = opts.clone();
        opts.stop_ids.extend(&self.format.stop_ids);
        generate_text(self.model, self.tok, &ids, &opts, on_text)
    }
}

/// Reads user turns from `input` and writes streamed replies to `out` until end of input or `/quit`.
pub fn repl(
    chat: &ChatModel,
    system: Option<&str>,
    opts: &GenerateOptions,
    input: impl BufRead,
    mut out: impl Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("<terminal>", e);
    let mut system = system.map(String::from);
    let mut messages: Vec<Message> = Vec::new();
    let mut turn = 0u64;
    writeln!(out, "chat: /reset clears the conversation, /system TEXT sets the system prompt, /save FILE writes it as JSON, /quit ends").map_err(io)?;
    write!(out, "> ").map_err(io)?;
    out.flush().map_err(io)?;
    for line in input.lines() {
        let line = line.map_err(io)?;
        let line = line.trim();
        if line.is_empty() {
        } else if line == "/quit" || line == "/exit" {
            break;
        } else if line == "/reset" {
            messages.clear();
            writeln!(out, "(conversation cleared)").map_err(io)?;
        } else if let Some(s) = line.strip_prefix("/system") {
            system = Some(s.trim().to_string()).filter(|s| !s.is_empty());
            messages.clear();
            writeln!(
                out,
                "(system prompt {}; conversation cleared)",
                if system.is_some() { "set" } else { "removed" }
            )
            .map_err(io)?;
        } else if let Some(f) = line.strip_prefix("/save") {
            let path = Path::new(f.trim());
            if f.trim().is_empty() {
                writeln!(out, "usage: /save FILE").map_err(io)?;
            } else {
                let all = full(&system, &messages);
                let json = serde_json::to_string_pretty(&serde_json::json!({ "messages": all }))
                    .expect("json");
                match crate::fsutil::write_atomic(path, json.as_bytes()) {
                    Ok(()) => writeln!(out, "(saved {} messages to {})", all.len(), path.display())
                        .map_err(io)?,
                    Err(e) => writeln!(out, "error: {e}").map_err(io)?,
                }
            }
        } else if line.starts_with('/') {
            writeln!(
                out,
                "unknown command {line}; commands: /reset, /system TEXT, /save FILE, /quit"
            )
            .map_err(io)?;
        } else {
            messages.push(Message::new("user", line));
            let mut o = opts.clone();
            o.sampling.seed = opts.sampling.seed.wrapping_add(turn);
            turn += 1;
            let g = chat.reply(&full(&system, &messages), &o, |piece| {
                write!(out, "{piece}").and_then(|_| out.flush()).map_err(io)
            })?;
            writeln!(out).map_err(io)?;
            messages.push(Message::new("assistant", &g.text));
        }
        write!(out, "> ").map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

fn full(system: &Option<String>, messages: &[Message]) -> Vec<Message> {
    system
        .iter()
        .map(|s| Message::new("system", s))
        .chain(messages.iter().cloned())
        .collect()
}
