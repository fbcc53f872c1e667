//! Opening a run's data: the token shards of pre-training (checked against the model's
//! vocabulary, with the tokenizer saved beside them), the chat files of fine-tuning, the pairs of
//! preference tuning, or the problems of reinforcement learning.

use super::source::Source;
use crate::config::{Objective, RunConfig};
use crate::data::{load_meta, BatchLoader, DataMeta, ShardSet};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

/// The batches of a run: token shards, or the chat files of a fine-tuning run. Pre-training takes
/// the tokenizer saved beside its shards, if any, into `tokenizer`; fine-tuning needs the model's.
pub(super) fn open_source(
    cfg: &RunConfig,
    model: &ModelConfig,
    tokenizer: &mut Option<Tokenizer>,
    rank: usize,
    world: usize,
) -> Result<Source> {
    if !cfg.is_sft() {
        let (_, train, val, data_tok) = open_data(cfg, model)?;
        *tokenizer = data_tok;
        let loader = BatchLoader::new(train, cfg.train.batch_size, cfg.train.seed, rank, world)?;
        return Ok(Source::Tokens { loader, val });
    }
    let tok = tokenizer
        .as_ref()
        .ok_or_else(|| Error::Config("fine-tuning needs the model's tokenizer".into()))?;
    match cfg.sft.objective {
        Objective::Dpo => super::pair_source::open_pairs(cfg, model, tok, rank, world),
        Objective::Rl => Ok(Source::Rollouts(Box::new(super::rl_source::open_problems(
            cfg, model, tok, rank, world,
        )?))),
        Objective::Sft => super::chat_source::open_chat(cfg, model, tok, rank, world),
    }
}

/// The run's token shards (training, and validation where there are any), checked against the
/// model's vocabulary, and the tokenizer saved beside them.
fn open_data(
    cfg: &RunConfig,
    model_cfg: &ModelConfig,
) -> Result<(DataMeta, ShardSet, Option<ShardSet>, Option<Tokenizer>)> {
    let dir = &cfg.data.dir;
    let meta = load_meta(dir)?;
    if meta.vocab_size > model_cfg.vocab_size {
        return Err(Error::Mismatch(format!(
            "{}: the data was tokenized with a vocabulary of {} tokens but the model's vocab_size is {}; \
             prepare the data with the model's tokenizer",
            dir.display(),
            meta.vocab_size,
            model_cfg.vocab_size
        )));
    }
    let train = ShardSet::open(dir, &meta.train_shards, cfg.train.context)?
        .with_vocab(model_cfg.vocab_size);
    let val = if meta.val_shards.is_empty() {
        None
    } else {
        let val = ShardSet::open(dir, &meta.val_shards, cfg.train.context)?
            .with_vocab(model_cfg.vocab_size);
        val.check_all_ids()?;
        Some(val)
    };
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::load(dir)?)
    } else {
        None
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() != meta.vocab_size && !dir.join("meta.json").exists() {
            return Err(Error::bad_file(
                dir,
                format!(
                    "meta.json is missing, so the shards were read as llm.c's ({} tokens of vocabulary), but tokenizer.json here has {}; restore meta.json or prepare the data again",
                    meta.vocab_size,
                    t.vocab_size()
                ),
            ));
        }
        if t.vocab_size() != meta.vocab_size {
            return Err(Error::bad_file(
                dir,
                format!(
                    "tokenizer.json ({} tokens) and meta.json ({}) disagree on the vocabulary size",
                    t.vocab_size(),
                    meta.vocab_size
                ),
            ));
        }
    }
    Ok((meta, train, val, tokenizer))
}
