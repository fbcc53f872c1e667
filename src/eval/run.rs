//! `chatforge eval`: which task, and each task scored into its JSON result and a one-line summary.

use super::tasks;
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::str::FromStr;

/// The tasks `chatforge eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalTask {
    /// Loss, perplexity and bits per byte of a text file.
    Ppl,
    Hellaswag,
    Arc,
    Lambada,
    Gsm8k,
    /// Exact match of the last assistant reply of each conversation in a chat file.
    Chat,
    /// Bias: the CrowS-Pairs sentence pairs.
    CrowsPairs,
}

impl EvalTask {
    pub const ALL: [EvalTask; 7] = [
        EvalTask::Ppl,
        EvalTask::Hellaswag,
        EvalTask::Arc,
        EvalTask::Lambada,
        EvalTask::Gsm8k,
        EvalTask::Chat,
        EvalTask::CrowsPairs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EvalTask::Ppl => "ppl",
            EvalTask::Hellaswag => "hellaswag",
            EvalTask::Arc => "arc",
            EvalTask::Lambada => "lambada",
            EvalTask::Gsm8k => "gsm8k",
            EvalTask::Chat => "chat",
            EvalTask::CrowsPairs => "crows_pairs",
        }
    }
}

impl FromStr for EvalTask {
    type Err = String;

    /// A task by name; the error lists the names (clap shows it for `--task`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        EvalTask::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EvalTask::ALL.iter().map(|t| t.name()).collect();
                format!("unknown task '{s}'; available: {}", names.join(", "))
            })
    }
}

/// What a task reads and how much of it.
pub struct EvalOptions {
    pub data: PathBuf,
    /// Score only the first N items.
    pub limit: Option<usize>,
    /// Longest generated answer in tokens (gsm8k, chat).
    pub max_tokens: usize,
    /// Windows scored together (ppl).
    pub batch_size: usize,
}

/// Scores `model` on `task`: the result as JSON and a one-line summary.
pub fn run_task(
    task: EvalTask,
    model: &Transformer,
    tok: &Tokenizer,
    o: &EvalOptions,
) -> Result<(serde_json::Value, String)> {
    Ok(match task {
        EvalTask::Ppl => {
            let text = crate::fsutil::read_to_string(&o.data)?;
            if text.trim().is_empty() {
                return Err(Error::bad_file(&o.data, "file is empty: nothing to score"));
            }
            let r = super::text_perplexity(model, tok, &text, o.batch_size)?;
            let line = format!(
                "ppl on {}: loss {:.4} | perplexity {:.2} | {:.4} bits/byte | {} tokens",
                o.data.display(),
                r.loss,
                r.loss.exp(),
                r.bits_per_byte,
                r.tokens
            );
            (to_json(&r)?, line)
        }
        EvalTask::Hellaswag | EvalTask::Arc => {
            let items = match task {
                EvalTask::Hellaswag => tasks::load_hellaswag(&o.data, o.limit)?,
                _ => tasks::load_arc(&o.data, o.limit)?,
            };
            let bar = crate::progress::steps_bar(items.len() as u64);
            let r = tasks::multiple_choice(model, tok, task.name(), &items, |_, _| bar.inc(1))?;
            bar.finish_and_clear();
            let line = format!(
                "{} ({} items): acc {:.4} | acc_norm {:.4}",
                task.name(),
                r.items,
                r.acc,
                r.acc_norm
            );
            (to_json(&r)?, line)
        }
        EvalTask::Lambada => {
            let r = tasks::lambada(model, tok, &o.data, o.limit)?;
            let line = format!(
                "lambada ({} items): acc {:.4} | ppl {:.2}",
                r.items, r.acc, r.ppl
            );
            (to_json(&r)?, line)
        }
        EvalTask::Chat => {
            let fields = crate::data::chat::ChatFields::default();
            let mut convs = crate::data::chat::load_conversations(&o.data, &fields)?;
            convs.truncate(o.limit.unwrap_or(usize::MAX));
            let r = tasks::chat_exact_match(model, tok, &convs, o.max_tokens)?;
            let line = format!("chat ({} items): exact match {:.4}", r.items, r.exact_match);
            (to_json(&r)?, line)
        }
        EvalTask::CrowsPairs => {
            let pairs = super::crows_pairs::load_crows_pairs(&o.data, o.limit)?;
            let bar = crate::progress::steps_bar(pairs.len() as u64);
            let r = super::crows_pairs::crows_pairs(model, tok, &pairs, |_, _, _| bar.inc(1))?;
            bar.finish_and_clear();
            (to_json(&r)?, r.summary())
        }
        EvalTask::Gsm8k => {
            let r = tasks::gsm8k(model, tok, &o.data, o.limit, o.max_tokens)?;
            let line = format!(
                "gsm8k ({} items): exact match {:.4}",
                r.items, r.exact_match
            );
            (to_json(&r)?, line)
        }
    })
}

fn to_json(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Mismatch(format!("the result as JSON: {e}")))
}
