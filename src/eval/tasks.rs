//! Benchmark tasks scored as lm-evaluation-harness scores them:
//!
//! - multiple choice (HellaSwag, ARC): each choice's summed log-likelihood after the context; `acc`
//!   takes the best sum, `acc_norm` the best sum divided by the choice's length in bytes;
//! - LAMBADA: the last word must be the model's greedy continuation (`acc`), with perplexity;
//! - GSM8K: greedy generation, exact match on the final number (the one after `####`).
//!
//! The context is encoded once (its KV cache is shared by the choices), each continuation separately,
//! as the harness does.

use crate::chat_template::ChatFormat;
use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::infer::{generate_text, GenerateOptions, SamplingParams};
use crate::kernels::cpu::nll::logsumexp;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use candle_core::Tensor;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// A multiple-choice item: context, continuations (with their leading space), the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct McItem {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

fn read_jsonl(path: &Path, limit: Option<usize>) -> Result<Vec<(usize, Value)>> {
    let text = crate::fsutil::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| Error::bad_file(path, format!("line {}: malformed JSON: {e}", i + 1)))?;
        out.push((i + 1, v));
    }
    if out.is_empty() {
        return Err(Error::bad_file(path, "no items in this file"));
    }
    Ok(out)
}

fn field<'a>(path: &Path, line: usize, v: &'a Value, key: &str) -> Result<&'a Value> {
    v.get(key)
        .ok_or_else(|| Error::bad_file(path, format!("line {line}: missing field '{key}'")))
}

fn str_field(path: &Path, line: usize, v: &Value, key: &str) -> Result<String> {
    field(path, line, v, key)?
        .as_str()
        .map(String::from)
        .ok_or_else(|| {
            Error::bad_file(path, format!("line {line}: field '{key}' must be a string"))
        })
}

fn choices_field(path: &Path, line: usize, v: &Value, key: &str) -> Result<Vec<String>> {
    let arr = field(path, line, v, key)?.as_array().ok_or_else(|| {
        Error::bad_file(path, format!("line {line}: field '{key}' must be a list"))
    })?;
    arr.iter()
        .map(|c| {
            c.as_str().map(|s| format!(" {s}")).ok_or_else(|| {
                Error::bad_file(path, format!("line {line}: '{key}' holds a non-string"))
            })
        })
        .collect()
}

fn gold_field(path: &Path, line: usize, v: &Value, key: &str, n: usize) -> Result<usize> {
    let g = field(path, line, v, key)?;
    let g = g
        .as_u64()
        .or_else(|| g.as_str().and_then(|s| s.parse().ok()));
    match g {
        Some(g) if (g as usize) < n => Ok(g as usize),
        _ => Err(Error::bad_file(
            path,
            format!("line {line}: '{key}' must be a choice index below {n}"),
        )),
    }
}

/// HellaSwag (`activity_label`, `ctx`, `endings`, `label`): context "label: ctx".
pub fn load_hellaswag(path: &Path, limit: Option<usize>) -> Result<Vec<McItem>> {
    read_jsonl(path, limit)?
        .into_iter()
        .map(|(l, v)| {
            let choices = choices_field(path, l, &v, "endings")?;
            let gold = gold_field(path, l, &v, "label", choices.len())?;
            let context = format!(
                "{}: {}",
                str_field(path, l, &v, "activity_label")?,
                str_field(path, l, &v, "ctx")?
            );
            Ok(McItem {
                context,
                choices,
                gold,
            })
        })
        .collect()
}

/// ARC as llm-foundry ships it (`query` "Question: ...", `choices`, `gold`): context "query\nAnswer:".
pub fn load_arc(path: &Path, limit: Option<usize>) -> Result<Vec<McItem>> {
    read_jsonl(path, limit)?
        .into_iter()
        .map(|(l, v)| {
            let choices = choices_field(path, l, &v, "choices")?;
            let gold = gold_field(path, l, &v, "gold", choices.len())?;
            Ok(McItem {
                context: format!("{}\nAnswer:", str_field(path, l, &v, "query")?),
                choices,
                gold,
            })
        })
        .collect()
}

/// Log-likelihood of each continuation after `context`, and whether each is the greedy choice
/// token by token. The context is run once; each continuation reuses its cache.
pub fn score_continuations(
    model: &Transformer,
    tok: &Tokenizer,
    context: &str,
    conts: &[String],
) -> Result<Vec<(f64, bool)>> {
    let ctx_ids = tok.encode(context)?;
    let conts: Vec<Vec<u32>> = conts.iter().map(|c| tok.encode(c)).collect::<Result<_>>()?;
    score_continuation_ids(model, &ctx_ids, &conts)
}

/// [`score_continuations`] on token ids.
pub fn score_continuation_ids(
    model: &Transformer,
    ctx_ids: &[u32],
    conts: &[Vec<u32>],
) -> Result<Vec<(f64, bool)>> {
    let cfg = &model.cfg;
    let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
    if ctx_ids.is_empty() || longest == 0 {
        return Err(Error::Mismatch("empty context or continuation".into()));
    }
    // Keep the end of the context when the whole would not fit.
    let keep = ctx_ids
        .len()
        .min(cfg.context.saturating_sub(longest))
        .max(1);
    let ctx_ids = &ctx_ids[ctx_ids.len() - keep..];
    let (cache, last) = model.prefill(ctx_ids)?;
    let first: Vec<f32> = last.flatten_all()?.to_vec1()?;
    // log softmax(row)[t], and whether t is the row's most likely token.
    let score = |row: &[f32], t: u32| {
        let ll = f64::from(row[t as usize] - logsumexp(row));
        (ll, crate::infer::sampler::argmax(row) == t)
    };
    let mut out = Vec::new();
    for c in conts {
        // The context's last position predicts c[0]; the continuation's own positions (all but
        // its last token, run on a copy of the context's cache) predict the rest.
        let (mut sum, mut greedy) = score(&first, c[0]);
        if c.len() > 1 {
            let mut cc = cache.clone();
            let y = Tensor::from_slice(&c[..c.len() - 1], (1, c.len() - 1), model.device())?;
            let h = model.forward_hidden(&y, cc.len(), Some(&mut cc))?;
            model.for_each_logits_row(&h, |j, row| {
                let (ll, g) = score(row, c[j + 1]);
                sum += ll;
                greedy &= g;
            })?;
        }
        out.push((sum, greedy));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct McResult {
    pub task: String,
    pub items: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// Scores multiple-choice items; `on_item` sees each item's choice log-likelihoods (for progress).
pub fn multiple_choice(
    model: &Transformer,
    tok: &Tokenizer,
    task: &str,
    items: &[McItem],
    mut on_item: impl FnMut(usize, &[f64]),
) -> Result<McResult> {
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    for (i, it) in items.iter().enumerate() {
        let lls: Vec<f64> = score_continuations(model, tok, &it.context, &it.choices)?
            .into_iter()
            .map(|s| s.0)
            .collect();
        let best = |f: &dyn Fn(usize) -> f64| {
            (0..lls.len())
                .max_by(|&a, &b| f(a).total_cmp(&f(b)))
                .unwrap_or(0)
        };
        acc += (best(&|j| lls[j]) == it.gold) as usize;
        acc_norm += (best(&|j| lls[j] / it.choices[j].len() as f64) == it.gold) as usize;
        on_item(i, &lls);
    }
    let n = items.len() as f64;
    Ok(McResult {
        task: task.into(),
        items: items.len(),
        acc: acc as f64 / n,
        acc_norm: acc_norm as f64 / n,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct LambadaResult {
    pub task: String,
    pub items: usize,
    pub acc: f64,
    pub ppl: f64,
}

/// LAMBADA (`context`, `continuation` = the last word).
pub fn lambada(
    model: &Transformer,
    tok: &Tokenizer,
    path: &Path,
    limit: Option<usize>,
) -> Result<LambadaResult> {
    let items = read_jsonl(path, limit)?;
    let (mut hits, mut nll) = (0usize, 0f64);
    for (l, v) in &items {
        let ctx = str_field(path, *l, v, "context")?;
        let word = format!(" {}", str_field(path, *l, v, "continuation")?.trim_start());
        let (ll, greedy) = score_continuations(model, tok, ctx.trim_end(), &[word])?[0];
        hits += greedy as usize;
        nll -= ll;
    }
    let n = items.len() as f64;
    Ok(LambadaResult {
        task: "lambada".into(),
        items: items.len(),
        acc: hits as f64 / n,
        ppl: (nll / n).exp(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Gsm8kResult {
    pub task: String,
    pub items: usize,
    pub exact_match: f64,
}

/// The number a GSM8K answer ends with: the one after `####`, else the last number in the text.
pub fn final_number(text: &str) -> Option<String> {
    let tail = text.rsplit_once("####").map(|(_, t)| t).unwrap_or(text);
    let clean = |s: &str| s.replace([',', '$'], "").trim_end_matches('.').to_string();
    let mut last = None;
    let mut cur = String::new();
    for ch in tail.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit()
            || (ch == '.' || ch == ',') && !cur.is_empty()
            || ch == '-' && cur.is_empty()
        {
            cur.push(ch);
        } else if !cur.is_empty() {
            if cur.chars().any(|c| c.is_ascii_digit()) {
                last = Some(clean(&cur));
                if text.contains("####") {
                    return last;
                }
            }
            cur.clear();
        }
    }
    last
}

/// Whether a reply's final number (`final_number`) is the gold one: equal as text, or as numbers
/// ("18.00" is 18).
pub fn same_number(reply: Option<&str>, gold: &str) -> bool {
    let Some(r) = reply else {
        return false;
    };
    match (r.parse::<f64>(), gold.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => r == gold,
    }
}

/// GSM8K's problems in `path` (`question`, `answer` ending "#### N"): each question and the final
/// number of its answer; the first `limit` of them.
pub fn gsm8k_problems(path: &Path, limit: Option<usize>) -> Result<Vec<(String, String)>> {
    read_jsonl(path, limit)?
        .iter()
        .map(|(l, v)| {
            let q = str_field(path, *l, v, "question")?;
            let gold = final_number(&str_field(path, *l, v, "answer")?).ok_or_else(|| {
                Error::bad_file(path, format!("line {l}: the answer has no final number"))
            })?;
            Ok((q, gold))
        })
        .collect()
}

/// GSM8K (`question`, `answer` ending "#### N"): greedy answers, through the chat template when
/// the model has one.
pub fn gsm8k(
    model: &Transformer,
    tok: &Tokenizer,
    path: &Path,
    limit: Option<usize>,
    max_tokens: usize,
) -> Result<Gsm8kResult> {
    let items = gsm8k_problems(path, limit)?;
    let format = ChatFormat::new(tok, model.cfg.eos_token_id).ok();
    let mut hits = 0;
    for (q, gold) in &items {
        let (prompt, stop_ids) = match &format {
            Some(f) => (
                f.prompt_ids(tok, &[Message::new("user", q)])?,
                f.stop_ids.clone(),
            ),
            None => (
                tok.encode(&format!("Question: {q}\nAnswer:"))?,
                tok.eot_id().into_iter().collect(),
            ),
        };
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: SamplingParams::greedy(),
            stop_ids,
            stop_strings: vec!["\n\nQuestion:".into()],
        };
        let g = generate_text(model, tok, &prompt, &opts, |_| Ok(()))?;
        hits += usize::from(same_number(final_number(&g.text).as_deref(), gold));
    }
    Ok(Gsm8kResult {
        task: "gsm8k".into(),
        items: items.len(),
        exact_match: hits as f64 / items.len() as f64,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatMatchResult {
    pub task: String,
    pub items: usize,
    pub exact_match: f64,
}

/// Chat conversations whose last message is the assistant's answer: the greedy reply to the
/// messages before it, through the chat template, must equal it (surrounding whitespace aside).
pub fn chat_exact_match(
    model: &Transformer,
    tok: &Tokenizer,
    convs: &[crate::data::chat::Conversation],
    max_tokens: usize,
) -> Result<ChatMatchResult> {
    let format = ChatFormat::new(tok, model.cfg.eos_token_id)?;
    let mut hits = 0;
    for c in convs {
        let (gold, prompt) = c
            .messages
            .split_last()
            .filter(|(last, _)| last.role == "assistant")
            .ok_or_else(|| {
                Error::Config("every conversation must end with the assistant's answer".into())
            })?;
        let ids = format.prompt_ids(tok, prompt)?;
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: SamplingParams::greedy(),
            stop_ids: format.stop_ids.clone(),
            stop_strings: vec![],
        };
        let g = generate_text(model, tok, &ids, &opts, |_| Ok(()))?;
        hits += (g.text.trim() == gold.content.trim()) as usize;
    }
    Ok(ChatMatchResult {
        task: "chat".into(),
        items: convs.len(),
        exact_match: hits as f64 / convs.len().max(1) as f64,
    })
}
