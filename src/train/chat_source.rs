//! The fine-tuning source: chat files (with their replacements) split into training and held-out
//! conversations, tokenized with the model's chat template.

use super::source::Source;
use crate::chat_template::ChatFormat;
use crate::chat_template::Message;
use crate::config::RunConfig;
use crate::data::chat::{load_conversations, ChatFields, Conversation};
use crate::data::sft::{build_examples, split_held_out, ChatLoader};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

/// `FROM=TO;FROM2=TO2` pairs.
pub fn parse_replacements(spec: &str) -> Result<Vec<(String, String)>> {
    spec.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "sft.replace '{p}': expected FROM=TO (pairs separated by ';')"
                ))
            })?;
            if a.is_empty() {
                return Err(Error::Config(format!("sft.replace '{p}': empty FROM")));
            }
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

/// `sft.replace`'s pairs applied to every message's text.
pub(super) fn replace_in<'m>(
    messages: impl Iterator<Item = &'m mut Message>,
    reps: &[(String, String)],
) {
    for m in messages {
        for (a, b) in reps {
            if m.content.contains(a.as_str()) {
                m.content = m.content.replace(a.as_str(), b);
            }
        }
    }
}

/// All conversations of the run's chat files, with the replacements applied.
pub fn load_chat_files(cfg: &RunConfig) -> Result<Vec<Conversation>> {
    let fields = ChatFields {
        prompt: cfg.sft.prompt_field.clone(),
        completion: cfg.sft.completion_field.clone(),
    };
    let reps = parse_replacements(&cfg.sft.replace)?;
    let mut all = Vec::new();
    for f in &cfg.sft.data {
        // hf://datasets/... files come from the Hub's cache.
        let local = crate::formats::hub::resolve_data_file(f)?;
        let mut convs = load_conversations(&local, &fields)?;
        replace_in(convs.iter_mut().flat_map(|c| &mut c.messages), &reps);
        all.extend(convs);
    }
    Ok(all)
}

/// The fine-tuning source: the conversations split into training and held-out sets, tokenized
/// with the model's chat template.
pub(super) fn open_chat(
    cfg: &RunConfig,
    model: &ModelConfig,
    tok: &Tokenizer,
    rank: usize,
    world: usize,
) -> Result<Source> {
    let format = ChatFormat::new(tok, model.eos_token_id)?;
    let convs = load_chat_files(cfg)?;
    let (train, held) = split_held_out(convs, cfg.sft.val_fraction, cfg.train.seed);
    let sample = match (
        cfg.eval.sample_prompt.as_str(),
        held.first().or(train.first()),
    ) {
        ("", Some(c)) => {
            let first_reply = c.messages.iter().position(|m| m.role == "assistant");
            c.messages[..first_reply.unwrap_or(0)].to_vec()
        }
        (p, _) => vec![Message::new("user", p)],
    };
    let context = cfg.train.context;
    let (train_ex, st) = build_examples(&format, tok, &train, context)?;
    let (val_ex, sv) = build_examples(&format, tok, &held, context)?;
    if rank == 0 {
        let tokens: usize = train_ex.iter().map(|e| e.inputs.len()).sum();
        eprintln!(
            "chat data: {} training conversations ({} tokens, {} assistant tokens), {} held out",
            train_ex.len(),
            crate::progress::human(tokens as f64),
            crate::progress::human(train_ex.iter().map(|e| e.trained()).sum::<usize>() as f64),
            val_ex.len()
        );
        let (cut, dropped) = (st.truncated + sv.truncated, st.dropped + sv.dropped);
        if cut + dropped > 0 {
            eprintln!(
                "note: {cut} conversations were cut to the context of {context} tokens; {dropped} had no assistant token left and were skipped"
            );
        }
    }
    let pad = tok.eot_id().unwrap_or(0);
    let loader = ChatLoader::new(
        train_ex,
        cfg.train.batch_size,
        cfg.train.seed,
        pad,
        rank,
        world,
    )?;
    Ok(Source::Chat {
        loader,
        val: val_ex,
        format,
        sample,
    })
}
