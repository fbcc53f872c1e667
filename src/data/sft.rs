//! Fine-tuning batches: tokenized conversations, one per row, padded to the longest row of the
//! batch, with targets of -100 wherever the loss must not look (prompt, system and user turns,
//! padding).
//!
//! Padding rather than packing: a packed row would need a block-diagonal attention mask so that one
//! conversation cannot attend to another, which the fused causal softmax does not take; padding
//! keeps every row a plain causal sequence (exactly what inference sees) at the cost of the pad
//! positions, which sorting-free random batches of similar-length chat data keep small.

use super::chat::{tokenize_conversation, Conversation};
use crate::chat_template::ChatFormat;
use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::ops::loss::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// One training row: input ids and next-token targets (IGNORE_INDEX where not trained on).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub inputs: Vec<u32>,
    pub targets: Vec<i64>,
}

impl Example {
    /// Positions that count in the loss.
    pub fn trained(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

/// What building examples dropped or cut, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExampleStats {
    pub truncated: usize,
    pub dropped: usize,
}

/// Renders and tokenizes conversations (in parallel); rows longer than `context` + 1 tokens are cut
/// to it; rows left without an assistant token are dropped.
pub fn build_examples(
    format: &ChatFormat,
    tok: &Tokenizer,
    convs: &[Conversation],
    context: usize,
) -> Result<(Vec<Example>, ExampleStats)> {
    // A row keeps its first context + 1 tokens, which span at most (context + 1) x the longest
    // token's bytes of text: a longer conversation is cut (at twice that, so that a word at the
    // cut cannot reach back into the row) before it is tokenized, instead of tokenizing a 100 MB
    // message whole, which takes gigabytes.
    let budget = 2 * (context + 1) * tok.longest_token_bytes();
    let rows: Vec<(Vec<u32>, Vec<bool>)> = convs
        .par_iter()
        .map(|c| match cut_to_bytes(c, budget) {
            Some(cut) => tokenize_conversation(format, tok, &cut),
            None => tokenize_conversation(format, tok, c),
        })
        .collect::<Result<_>>()?;
    let mut stats = ExampleStats::default();
    let mut out = Vec::with_capacity(rows.len());
    for (mut ids, mut mask) in rows {
        if ids.len() > context + 1 {
            ids.truncate(context + 1);
            mask.truncate(context + 1);
            stats.truncated += 1;
        }
        let ex = Example {
            inputs: ids[..ids.len() - 1].to_vec(),
            targets: (1..ids.len())
                .map(|i| if mask[i] { ids[i] as i64 } else { IGNORE_INDEX })
                .collect(),
        };
        if ex.trained() == 0 {
            stats.dropped += 1;
        } else {
            out.push(ex);
        }
    }
    Ok((out, stats))
}

/// `conv` with its messages' text cut to `budget` bytes in all (later messages dropped), or None
/// when it is shorter.
fn cut_to_bytes(conv: &Conversation, budget: usize) -> Option<Conversation> {
    let total: usize = conv.messages.iter().map(|m| m.content.len()).sum();
    if total <= budget {
        return None;
    }
    let mut messages = Vec::new();
    let mut left = budget;
    for m in &conv.messages {
        if m.content.len() < left {
            left -= m.content.len();
            messages.push(m.clone());
            continue;
        }
        let end = m.content.floor_char_boundary(left);
        messages.push(Message::new(&m.role, &m.content[..end]));
        break;
    }
    Some(Conversation { messages })
}

/// Splits off the last `fraction` of the items (at least one, when there are two or more and the
/// fraction is positive) after a seeded shuffle: (train, held out).
pub fn split_held_out<T>(mut all: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5f7);
    all.shuffle(&mut rng);
    let n_val = if fraction > 0.0 && all.len() >= 2 {
        ((all.len() as f64 * fraction).round() as usize).clamp(1, all.len() - 1)
    } else {
        0
    };
    let val = all.split_off(all.len() - n_val);
    (all, val)
}

/// A padded batch: (B, T) row-major inputs (padded with `pad`) and targets (padded with -100).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<i64>,
    pub batch: usize,
    pub len: usize,
    /// Positions that count in the loss.
    pub trained: usize,
}

pub fn pad_batch(rows: &[&Example], pad: u32) -> PaddedBatch {
    let len = rows.iter().map(|r| r.inputs.len()).max().unwrap_or(0);
    let mut inputs = Vec::with_capacity(rows.len() * len);
    let mut targets = Vec::with_capacity(rows.len() * len);
    for r in rows {
        inputs.extend_from_slice(&r.inputs);
        inputs.extend(std::iter::repeat_n(pad, len - r.inputs.len()));
        targets.extend_from_slice(&r.targets);
        targets.extend(std::iter::repeat_n(IGNORE_INDEX, len - r.targets.len()));
    }
    PaddedBatch {
        inputs,
        targets,
        batch: rows.len(),
        len,
        trained: rows.iter().map(|r| r.trained()).sum(),
    }
}

/// Epochs of seeded shuffles over `len` items, drawn `batch` at a time by each of `world` ranks;
/// batch k is a pure function of (seed, k), so the position alone is the checkpointed state. The
/// last partial batch of an epoch is dropped (as `drop_last`), unless the whole set is smaller
/// than one batch.
#[derive(Debug, Clone)]
pub struct EpochSampler {
    len: usize,
    batch: usize,
    seed: u64,
    pub position: u64,
    rank: u64,
    world: u64,
}

impl EpochSampler {
    pub fn new(len: usize, batch: usize, seed: u64, rank: usize, world: usize) -> Self {
        EpochSampler {
            len,
            batch: batch.max(1),
            seed,
            position: 0,
            rank: rank as u64,
            world: world as u64,
        }
    }

    /// Optimizer-step batches per epoch (over all ranks).
    pub fn batches_per_epoch(&self) -> usize {
        (self.len / (self.batch * self.world as usize)).max(1)
    }

    /// The indices of this rank's next batch.
    pub fn next_indices(&mut self) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch() as u64;
        let (epoch, j) = (self.position / per_epoch, self.position % per_epoch);
        self.position += 1;
        let mut order: Vec<usize> = (0..self.len).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
        let width = self.batch * self.world as usize;
        let start = j as usize * width + self.rank as usize * self.batch;
        (start..start + self.batch)
            .map(|i| order[i % order.len()])
            .collect()
    }
}

/// Padded batches of conversations, drawn by an [`EpochSampler`].
pub struct ChatLoader {
    examples: Vec<Example>,
    pad: u32,
    pub sampler: EpochSampler,
}

impl ChatLoader {
    pub fn new(
        examples: Vec<Example>,
        batch: usize,
        seed: u64,
        pad: u32,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(Error::Config("no conversations left to train on".into()));
        }
        let sampler = EpochSampler::new(examples.len(), batch, seed, rank, world);
        Ok(ChatLoader {
            examples,
            pad,
            sampler,
        })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    pub fn next_batch(&mut self) -> PaddedBatch {
        let rows: Vec<&Example> = self
            .sampler
            .next_indices()
            .into_iter()
            .map(|i| &self.examples[i])
            .collect();
        pad_batch(&rows, self.pad)
    }
}
