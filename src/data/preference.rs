//! Preference pairs for DPO: a prompt and two replies, the chosen and the rejected. Read from
//! TRL's preference records (`prompt`/`chosen`/`rejected` as strings or OpenAI message lists) and
//! from whole transcripts (`chosen`/`rejected` only) that share their start (message lists, or
//! HH-RLHF's `\n\nHuman: …\n\nAssistant: …` text), split where they part. Each side is rendered
//! with the model's chat template and trained on after the prompt only.

use super::sft::Example;
use crate::chat_template::{ChatFormat, Message};
use crate::error::{Error, Result};
use crate::ops::loss::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde_json::Value;
use std::path::Path;

/// One pair: the conversation so far and the two replies (each one or more messages).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
}

/// A tokenized pair: each side the prompt and its reply, with targets only on the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExample {
    pub chosen: Example,
    pub rejected: Example,
}

/// HH-RLHF's transcript text as messages: `\n\nHuman:` turns are the user's, `\n\nAssistant:`
/// turns the assistant's.
pub fn parse_transcript(text: &str) -> std::result::Result<Vec<Message>, String> {
    const MARKS: [(&str, &str); 2] = [("\n\nHuman:", "user"), ("\n\nAssistant:", "assistant")];
    let next_mark = |from: usize| {
        MARKS
            .iter()
            .filter_map(|(m, role)| text[from..].find(m).map(|i| (from + i, m.len(), *role)))
            .min_by_key(|&(at, _, _)| at)
    };
    let mut turns = Vec::new();
    let Some((mut at, mut len, mut role)) = next_mark(0) else {
        return Err("a transcript without '\\n\\nHuman:' / '\\n\\nAssistant:' turns".into());
    };
    if !text[..at].trim().is_empty() {
        return Err("text before the transcript's first '\\n\\nHuman:' turn".into());
    }
    loop {
        let start = at + len;
        let next = next_mark(start);
        let end = next.map_or(text.len(), |n| n.0);
        turns.push(Message::new(role, text[start..end].trim()));
        match next {
            Some(n) => (at, len, role) = n,
            None => break,
        }
    }
    Ok(turns)
}

/// A field that is a string (one message of `role`) or an OpenAI message list.
fn messages(v: &Value, field: &str, role: &str) -> std::result::Result<Vec<Message>, String> {
    match v {
        Value::String(s) => Ok(vec![Message::new(role, s)]),
        Value::Array(ms) => ms
            .iter()
            .map(|m| {
                let text = |k: &str| {
                    m.get(k)
                        .and_then(Value::as_str)
                        .ok_or(format!("'{field}': a message without a string '{k}'"))
                };
                Ok(Message::new(text("role")?, text("content")?))
            })
            .collect(),
        _ => Err(format!(
            "'{field}' is neither a string nor a list of messages"
        )),
    }
}

/// Two transcripts as a pair, as TRL's `extract_prompt` splits them: the prompt is the messages
/// they share from the start, each reply the rest (normally each one's last assistant message;
/// in the few HH-RLHF rows that part earlier, more), which must begin with the assistant's turn.
fn split_transcripts(
    chosen: Vec<Message>,
    rejected: Vec<Message>,
) -> std::result::Result<PreferencePair, String> {
    let shared = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(c, r)| c == r)
        .count();
    if shared == chosen.len() && shared == rejected.len() {
        return Err("'chosen' and 'rejected' are the same reply: the pair prefers nothing".into());
    }
    let (c, r) = (&chosen[shared..], &rejected[shared..]);
    for (name, reply) in [("chosen", c), ("rejected", r)] {
        match reply.first() {
            None => {
                return Err(format!(
                    "'{name}' is all of the other transcript's start: it has no reply of its own"
                ))
            }
            Some(m) if m.role != "assistant" => {
                return Err(format!(
                    "the transcripts part at a {} turn, not at an assistant reply (give the prompt in a 'prompt' field)",
                    m.role
                ))
            }
            Some(_) => {}
        }
    }
    Ok(PreferencePair {
        prompt: chosen[..shared].to_vec(),
        chosen: c.to_vec(),
        rejected: r.to_vec(),
    })
}

/// One record in any of the forms.
pub fn preference_pair(v: &Value) -> std::result::Result<PreferencePair, String> {
    let field = |k: &str| {
        v.get(k).ok_or(format!(
            "no '{k}' field (a pair needs 'chosen' and 'rejected', and a 'prompt' unless both are whole transcripts)"
        ))
    };
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    let pair = match v.get("prompt") {
        Some(p) => PreferencePair {
            prompt: messages(p, "prompt", "user")?,
            chosen: messages(chosen, "chosen", "assistant")?,
            rejected: messages(rejected, "rejected", "assistant")?,
        },
        None => {
            let side = |x: &Value, name: &str| match x {
                Value::String(s) => parse_transcript(s).map_err(|e| format!("'{name}': {e}")),
                _ => messages(x, name, "assistant"),
            };
            split_transcripts(side(chosen, "chosen")?, side(rejected, "rejected")?)?
        }
    };
    if pair.prompt.iter().all(|m| m.content.trim().is_empty()) {
        return Err("an empty prompt".into());
    }
    if pair.chosen == pair.rejected {
        return Err("'chosen' and 'rejected' are the same reply: the pair prefers nothing".into());
    }
    for (name, side) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
        if side.is_empty() {
            return Err(format!("'{name}' has no reply"));
        }
    }
    Ok(pair)
}

/// Reads a `.jsonl` file (one pair per line) or a `.json` file (a list of pairs).
pub fn load_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let text = crate::fsutil::read_to_string(path)?;
    let trimmed = text.trim_start();
    let records: Vec<(String, Value)> = if trimmed.starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(trimmed)
            .map_err(|e| Error::bad_file(path, format!("malformed JSON: {e}")))?;
        all.into_iter()
            .enumerate()
            .map(|(i, v)| (format!("record {i}"), v))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str(line).map_err(|e| {
                Error::bad_file(path, format!("line {}: malformed JSON: {e}", i + 1))
            })?;
            out.push((format!("line {}", i + 1), v));
        }
        out
    };
    let pairs = records
        .iter()
        .map(|(at, v)| preference_pair(v).map_err(|e| Error::bad_file(path, format!("{at}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    if pairs.is_empty() {
        return Err(Error::bad_file(path, "no preference pairs in this file"));
    }
    Ok(pairs)
}

/// The tokens of `reply` after the rendered `prompt` (whose generation prompt is `before`).
fn reply_ids(
    format: &ChatFormat,
    tok: &Tokenizer,
    prompt: &[Message],
    before: &[u32],
    reply: &[Message],
) -> Result<Vec<u32>> {
    let all: Vec<Message> = prompt.iter().chain(reply).cloned().collect();
    let ids = format.ids(tok, &all, false)?;
    if !ids.starts_with(before) {
        return Err(Error::Tokenizer(
            "the chat template does not render a conversation as its prompt followed by the reply; cannot find the reply's tokens".into(),
        ));
    }
    Ok(ids[before.len()..].to_vec())
}

/// `prompt` then `reply`, cut to `budget` tokens, as inputs and next-token targets on the reply.
fn example(prompt: &[u32], reply: &[u32], budget: usize) -> Example {
    let mut ids: Vec<u32> = prompt.iter().chain(reply).copied().collect();
    ids.truncate(budget);
    let targets = (1..ids.len())
        .map(|i| match i >= prompt.len() {
            true => ids[i] as i64,
            false => IGNORE_INDEX,
        })
        .collect();
    ids.pop();
    Example {
        inputs: ids,
        targets,
    }
}

/// A pair as two rows of at most `context` + 1 tokens, and whether it was cut. Where the prompt
/// and the longer reply do not fit, the prompt keeps its end (the turns the replies answer; as
/// TRL's `keep_end`), at least half the rows, and the replies what is left after it. None when a
/// side has no reply token.
fn pair_example(
    format: &ChatFormat,
    tok: &Tokenizer,
    p: &PreferencePair,
    context: usize,
) -> Result<(Option<PairExample>, bool)> {
    let before = format.ids(tok, &p.prompt, true)?;
    let chosen = reply_ids(format, tok, &p.prompt, &before, &p.chosen)?;
    let rejected = reply_ids(format, tok, &p.prompt, &before, &p.rejected)?;
    let budget = context + 1;
    let longest = chosen.len().max(rejected.len());
    let keep = match before.len() + longest <= budget {
        true => before.len(),
        false => before
            .len()
            .min((budget / 2).max(budget.saturating_sub(longest))),
    };
    let prompt = &before[before.len() - keep..];
    let cut = keep < before.len() || prompt.len() + longest > budget;
    let pair = PairExample {
        chosen: example(prompt, &chosen, budget),
        rejected: example(prompt, &rejected, budget),
    };
    let trains = pair.chosen.trained() > 0 && pair.rejected.trained() > 0;
    Ok((trains.then_some(pair), cut))
}

/// What tokenizing pairs cut or dropped, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct PairStats {
    /// Pairs longer than the context, cut to it (the prompt's start first).
    pub truncated: usize,
    /// Pairs with a side that has no reply token, left out.
    pub dropped: usize,
}

/// Renders and tokenizes pairs (in parallel), each cut to `context` tokens (see `pair_example`).
pub fn build_pair_examples(
    format: &ChatFormat,
    tok: &Tokenizer,
    pairs: &[PreferencePair],
    context: usize,
) -> Result<(Vec<PairExample>, PairStats)> {
    let rows: Vec<_> = pairs
        .par_iter()
        .map(|p| pair_example(format, tok, p, context))
        .collect::<Result<_>>()?;
    let mut stats = PairStats::default();
    let mut out = Vec::with_capacity(rows.len());
    for (pair, cut) in rows {
        match pair {
            Some(pair) => {
                stats.truncated += usize::from(cut);
                out.push(pair);
            }
            None => stats.dropped += 1,
        }
    }
    Ok((out, stats))
}
