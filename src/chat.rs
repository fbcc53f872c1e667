//! The terminal chat: a conversation rendered with the model's chat template, replies streamed as
//! they are generated, and `/reset`, `/system TEXT`, `/save FILE`, `/quit` commands.

use crate::chat_template::{render, Message};
use crate::error::{Error, Result};
use crate::infer::{generate_text, GenerateOptions};
use crate::model::Transformer;
use crate::tokenizer::{Tokenizer, CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START};
use std::io::{BufRead, Write};
use std::path::Path;

/// How a model's conversations become prompt ids: its chat template and the tokens that end a reply.
#[derive(Clone)]
pub struct ChatFormat {
    template: String,
    eos: String,
    pub stop_ids: Vec<u32>,
}

impl ChatFormat {
    /// The tokenizer's template, else ChatML when the vocabulary has its tokens.
    pub fn new(tok: &Tokenizer, eos_token_id: Option<u32>) -> Result<Self> {
        let template = match &tok.chat_template {
            Some(t) => t.clone(),
            None if tok.token_id(IM_START).is_some() && tok.token_id(IM_END).is_some() => CHATML_TEMPLATE.to_string(),
            None => {
                return Err(Error::Tokenizer(
                    "this model has no chat template (tokenizer_config.json 'chat_template') and no ChatML tokens; \
                     use `chatforge generate` for plain completion"
                        .into(),
                ))
            }
        };
        let mut stop_ids: Vec<u32> = [IM_END, END_OF_TEXT]
            .iter()
            .filter_map(|t| tok.token_id(t))
            .collect();
        stop_ids.extend(eos_token_id);
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let eos = tok
            .eot_id()
            .and_then(|i| tok.inner.id_to_token(i))
            .unwrap_or_default();
        Ok(ChatFormat {
            template,
            eos,
            stop_ids,
        })
    }

    /// The prompt ids for `messages`, ending where the assistant's reply starts.
    pub fn prompt_ids(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        self.ids(tok, messages, true)
    }

    /// The ids of `messages` rendered with the template.
    pub fn ids(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        tok.encode(&render(
            &self.template,
            messages,
            add_generation_prompt,
            "",
            &self.eos,
        )?)
    }
}

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
        let room = self.model.cfg.context.saturating_sub(ids.len() + 1);
        opts.max_new_tokens = opts.max_new_tokens.min(room);
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
