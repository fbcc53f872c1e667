//! Chat data for fine-tuning: OpenAI `messages`, ShareGPT `conversations` and prompt/completion
//! pairs, rendered with the model's chat template, with a mask that marks exactly the assistant's
//! tokens (its reply and the end-of-turn token after it) as the ones to train on.

use crate::chat_template::ChatFormat;
use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

/// Which fields hold the text of prompt/completion records (e.g. GSM8K's `question`/`answer`).
#[derive(Debug, Clone)]
pub struct ChatFields {
    pub prompt: String,
    pub completion: String,
}

impl Default for ChatFields {
    fn default() -> Self {
        ChatFields {
            prompt: "prompt".into(),
            completion: "completion".into(),
        }
    }
}

fn sharegpt_role(from: &str) -> Option<&'static str> {
    match from {
        "human" | "user" => Some("user"),
        "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => Some("assistant"),
        "system" => Some("system"),
        _ => None,
    }
}

/// One record in any of the three forms.
fn conversation(v: &Value, fields: &ChatFields) -> std::result::Result<Conversation, String> {
    let text = |m: &Value, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(format!("a message without a string '{k}'"))
    };
    let messages = if let Some(ms) = v.get("messages").and_then(Value::as_array) {
        ms.iter()
            .map(|m| {
                Ok(Message {
                    role: text(m, "role")?,
                    content: text(m, "content")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?
    } else if let Some(cs) = v.get("conversations").and_then(Value::as_array) {
        cs.iter()
            .map(|m| {
                let from = text(m, "from")?;
                let role = sharegpt_role(&from).ok_or(format!(
                    "unknown speaker '{from}' (expected human/gpt/system)"
                ))?;
                Ok(Message {
                    role: role.into(),
                    content: text(m, "value")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?
    } else if let (Some(p), Some(c)) = (v.get(&fields.prompt), v.get(&fields.completion)) {
        let (p, c) = (
            p.as_str().ok_or("the prompt is not a string")?,
            c.as_str().ok_or("the completion is not a string")?,
        );
        vec![Message::new("user", p), Message::new("assistant", c)]
    } else {
        return Err(format!(
            "expected 'messages', 'conversations', or '{}'/'{}' fields (set them with --prompt-field/--completion-field)",
            fields.prompt, fields.completion
        ));
    };
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to train on".into());
    }
    Ok(Conversation { messages })
}

/// Reads a `.jsonl` file (one record per line) or a `.json` file (a list of records).
pub fn load_conversations(path: &Path, fields: &ChatFields) -> Result<Vec<Conversation>> {
    let text = crate::fsutil::read_to_string(path)?;
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    if trimmed.starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(trimmed)
            .map_err(|e| Error::bad_file(path, format!("malformed JSON: {e}")))?;
        for (i, v) in all.iter().enumerate() {
            out.push(
                conversation(v, fields)
                    .map_err(|e| Error::bad_file(path, format!("record {i}: {e}")))?,
            );
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| {
                Error::bad_file(path, format!("line {}: malformed JSON: {e}", i + 1))
            })?;
            out.push(
                conversation(&v, fields)
                    .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))?,
            );
        }
    }
    if out.is_empty() {
        return Err(Error::bad_file(path, "no conversations in this file"));
    }
    Ok(out)
}

/// Token ids of a rendered conversation and, for each, whether it is an assistant token to train on.
pub fn tokenize_conversation(
    format: &ChatFormat,
    tok: &Tokenizer,
    conv: &Conversation,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let ids = format.ids(tok, &conv.messages, false)?;
    let mut train = vec![false; ids.len()];
    for (i, m) in conv.messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        // The reply is what rendering the conversation up to it adds to the generation prompt.
        let before = format.ids(tok, &conv.messages[..i], true)?;
        let through = format.ids(tok, &conv.messages[..=i], false)?;
        if !through.starts_with(&before) || !ids.starts_with(&through) {
            return Err(Error::Tokenizer(
                "the chat template does not render conversations as growing prefixes; cannot find the assistant's tokens".into(),
            ));
        }
        train[before.len()..through.len()]
            .iter_mut()
            .for_each(|t| *t = true);
    }
    Ok((ids, train))
}

/// Writes conversations as JSONL in the OpenAI `messages` form (atomically).
pub fn save_conversations(path: &Path, convs: &[Conversation]) -> Result<()> {
    let mut text = String::new();
    for c in convs {
        text.push_str(&serde_json::json!({ "messages": c.messages }).to_string());
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
}
