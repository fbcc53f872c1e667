//! Where a run's batches and validation come from: token shards (pre-training) or tokenized
//! conversations (fine-tuning) or preference pairs (DPO), or a task's problems (reinforcement
//! learning, whose batches the run samples itself: `rl.rs`).

use super::dpo::{batch_tensors, PairLoader, PairRows};
use crate::chat_template::{ChatFormat, Message};
use crate::config::DpoSection;
use crate::data::preference::PairExample;
use crate::data::sft::{pad_batch, ChatLoader, Example};
use crate::data::{BatchLoader, ShardSet};
use crate::error::Result;
use crate::eval::score_windows;
use crate::model::Transformer;
use crate::ops::loss::token_nll;
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
    /// Preference pairs (DPO), with the reference's log-probabilities of each.
    Pairs {
        loader: PairLoader,
        val: Vec<PairExample>,
        val_refs: Vec<[f64; 2]>,
        format: ChatFormat,
        sample: Vec<Message>,
    },
    /// A task's problems (GRPO).
    Rollouts(Box<super::rl_source::Rollouts>),
}

/// One micro-batch on the device: inputs (B, T) u32, targets (B, T), tokens computed; for pairs,
/// what the preference loss needs besides.
pub(super) struct StepBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub tokens: u64,
    pub pairs: Option<PairRows>,
}

/// A validation pass: the loss per token (per pair for preference data), bits per byte for text,
/// and the preference metrics.
pub(super) struct Validation {
    pub loss: f64,
    pub bpb: Option<f64>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Source {
    pub fn position(&self) -> u64 {
        match self {
            Source::Tokens { loader, .. } => loader.position,
            Source::Chat { loader, .. } => loader.sampler.position,
            Source::Pairs { loader, .. } => loader.sampler.position,
            Source::Rollouts(r) => r.steps,
        }
    }

    /// Batches in one pass over the data (fine-tuning; pre-training windows are sampled).
    pub fn batches_per_epoch(&self) -> usize {
        match self {
            Source::Tokens { .. } => 1,
            Source::Chat { loader, .. } => loader.sampler.batches_per_epoch(),
            Source::Pairs { loader, .. } => loader.sampler.batches_per_epoch(),
            Source::Rollouts(r) => r.sampler.batches_per_epoch() * r.iterations,
        }
    }

    pub fn set_position(&mut self, p: u64) {
        match self {
            Source::Tokens { loader, .. } => loader.position = p,
            Source::Chat { loader, .. } => loader.sampler.position = p,
            Source::Pairs { loader, .. } => loader.sampler.position = p,
            Source::Rollouts(r) => r.set_position(p),
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
                    pairs: None,
                }
            }
            Source::Chat { loader, .. } => {
                let b = loader.next_batch();
                StepBatch {
                    x: Tensor::from_vec(b.inputs, (b.batch, b.len), device)?,
                    y: Tensor::from_vec(b.targets, (b.batch, b.len), device)?,
                    tokens: (b.batch * b.len) as u64,
                    pairs: None,
                }
            }
            Source::Pairs { loader, .. } => {
                let (b, rows) = loader.next_batch();
                let (x, y) = batch_tensors(&b, device)?;
                StepBatch {
                    x,
                    y,
                    tokens: (b.batch * b.len) as u64,
                    pairs: Some(rows),
                }
            }
            Source::Rollouts(_) => {
                return Err(crate::error::Error::Training(
                    "reinforcement learning samples its batches with the policy (Run::rl_step_gradients)".into(),
                ))
            }
        })
    }

    /// Validation loss per token and, for text, bits per byte; for pairs, the preference loss and
    /// metrics.
    pub fn validate(
        &self,
        model: &Transformer,
        windows: usize,
        batch: usize,
        token_bytes: &[u32],
        dpo: &DpoSection,
    ) -> Result<Option<Validation>> {
        if let Source::Pairs {
            val,
            val_refs,
            loader,
            ..
        } = self
        {
            if val.is_empty() {
                return Ok(None);
            }
            let s = super::dpo::evaluate(model, val, val_refs, batch, loader.pad, dpo)?;
            return Ok(Some(Validation {
                loss: s.mean_loss(),
                bpb: None,
                extra: s.means(),
            }));
        }
        let plain = |loss, bpb| {
            Some(Validation {
                loss,
                bpb,
                extra: Default::default(),
            })
        };
        match self {
            Source::Pairs { .. } | Source::Rollouts(_) => Ok(None),
            Source::Tokens { val: None, .. } => Ok(None),
            Source::Tokens { val: Some(val), .. } => {
                let windows = val.sequential_windows(windows);
                if windows.is_empty() {
                    return Ok(None);
                }
                let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
                let (nats, count, bytes) = score_windows(model, &refs, token_bytes, batch)?;
                let bpb = (bytes > 0).then(|| nats / std::f64::consts::LN_2 / bytes as f64);
                Ok(plain(nats / count as f64, bpb))
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
                Ok(plain(nats / count.max(1) as f64, None))
            }
        }
    }
}
