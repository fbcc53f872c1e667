//! Where a run's batches and validation come from: token shards (pre-training) or tokenized
//! conversations (fine-tuning).

use crate::chat::ChatFormat;
use crate::chat_template::Message;
use crate::config::RunConfig;
use crate::data::sft::{pad_batch, ChatLoader, Example};
use crate::data::{load_meta, BatchLoader, DataMeta, ShardSet};
use crate::error::{Error, Result};
use crate::eval::score_windows;
use crate::model::ModelConfig;
use crate::model::Transformer;
use crate::ops::loss::token_nll;
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};

pub(super) enum Source {
    Tokens {
        loader: BatchLoader,
        val: Option<ShardSet>,
    },
    Chat {
        loader: ChatLoader,
        val: Vec<Example>,
        format: ChatFormat,
        /// The conversation a sample reply is generated for.
        sample: Vec<Message>,
    },
}

/// One micro-batch on the device: inputs (B, T) u32, targets (B, T), tokens computed.
pub(super) struct StepBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub tokens: u64,
}

impl Source {
    pub fn position(&self) -> u64 {
        match self {
            Source::Tokens { loader, .. } => loader.position,
            Source::Chat { loader, .. } => loader.position,
        }
    }

    /// Batches in one pass over the data (fine-tuning; pre-training windows are sampled).
    pub fn batches_per_epoch(&self) -> usize {
        match self {
            Source::Tokens { .. } => 1,
            Source::Chat { loader, .. } => loader.batches_per_epoch(),
        }
    }

    pub fn set_position(&mut self, p: u64) {
        match self {
            Source::Tokens { loader, .. } => loader.position = p,
            Source::Chat { loader, .. } => loader.position = p,
        }
    }

    pub fn next(&mut self, device: &Device) -> Result<StepBatch> {
        Ok(match self {
            Source::Tokens { loader, .. } => {
                let b = loader.next_batch()?;
                StepBatch {
                    x: Tensor::from_vec(b.inputs, (b.batch, b.context), device)?,
                    y: Tensor::from_vec(b.targets, (b.batch, b.context), device)?,
                    tokens: (b.batch * b.context) as u64,
                }
            }
            Source::Chat { loader, .. } => {
                let b = loader.next_batch();
                StepBatch {
                    x: Tensor::from_vec(b.inputs, (b.batch, b.len), device)?,
                    y: Tensor::from_vec(b.targets, (b.batch, b.len), device)?,
                    tokens: (b.batch * b.len) as u64,
                }
            }
        })
    }

    /// Validation loss per token and, for text, bits per byte.
    pub fn validate(
        &self,
        model: &Transformer,
        windows: usize,
        batch: usize,
        token_bytes: &[u32],
    ) -> Result<Option<(f64, Option<f64>)>> {
        match self {
            Source::Tokens { val: None, .. } => Ok(None),
            Source::Tokens { val: Some(val), .. } => {
                let windows = val.sequential_windows(windows);
                if windows.is_empty() {
                    return Ok(None);
                }
                let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
                let (nats, count, bytes) = score_windows(model, &refs, token_bytes, batch)?;
                let bpb = (bytes > 0).then(|| nats / std::f64::consts::LN_2 / bytes as f64);
                Ok(Some((nats / count as f64, bpb)))
            }
            Source::Chat { val, .. } if val.is_empty() => Ok(None),
            Source::Chat { val, .. } => {
                let (mut nats, mut count) = (0f64, 0usize);
                for chunk in val.chunks(batch.max(1)) {
                    let rows: Vec<&Example> = chunk.iter().collect();
                    let b = pad_batch(&rows, 0);
                    let dev = model.device();
                    let x = Tensor::from_vec(b.inputs, (b.batch, b.len), dev)?;
                    let y = Tensor::from_vec(b.targets, b.batch * b.len, dev)?;
                    let logits = model.forward(&x, 0, None)?;
                    let v = logits.dim(2)?;
                    let nll = token_nll(&logits.reshape((b.batch * b.len, v))?, &y)?;
                    nats += nll.sum_all()?.to_scalar::<f32>()? as f64;
                    count += b.trained;
                }
                Ok(Some((nats / count.max(1) as f64, None)))
            }
        }
    }
}

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
    super::chat_source::open_chat(cfg, model, tok, rank, world)
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
