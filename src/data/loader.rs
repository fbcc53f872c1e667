//! Batches of random windows from token shards. Batch k depends only on (seed, k, rank), so the
//! loader's whole state is one counter: a resumed run continues with exactly the next batch.

use super::prepare::DataMeta;
use super::shard::TokenShard;
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// The shards of one split, read as one sequence of windows.
pub struct ShardSet {
    shards: Vec<TokenShard>,
    /// Cumulative count of window starts (each shard offers len - T starts for windows of T + 1).
    starts: Vec<u64>,
    pub context: usize,
    /// Ids must be below this (checked as windows are read; `u32::MAX` until `with_vocab`).
    vocab_size: usize,
}

impl ShardSet {
    /// Opens `names` in `dir` for windows of `context + 1` tokens; every id must be below `vocab_size`.
    pub fn open(dir: &Path, names: &[String], context: usize) -> Result<Self> {
        let mut shards = Vec::new();
        let mut starts = vec![0u64];
        for n in names {
            let s = TokenShard::open(&dir.join(n))?;
            let windows = s.len().saturating_sub(context) as u64;
            starts.push(starts.last().expect("non-empty") + windows);
            shards.push(s);
        }
        Ok(ShardSet {
            shards,
            starts,
            context,
            vocab_size: u32::MAX as usize,
        })
    }

    /// Ids of this set must be below `vocab_size` (the model's embedding rows): a window holding
    /// another is an error naming the shard and the position.
    pub fn with_vocab(mut self, vocab_size: usize) -> Self {
        self.vocab_size = vocab_size;
        self
    }

    /// Every id of every shard checked against the vocabulary (for the small validation split,
    /// before training starts rather than after it).
    pub fn check_all_ids(&self) -> Result<()> {
        for s in &self.shards {
            self.check_ids(s, 0, s.len())?;
        }
        Ok(())
    }

    fn check_ids(&self, s: &TokenShard, start: usize, n: usize) -> Result<()> {
        match (start..start + n).find(|&i| s.get(i) as usize >= self.vocab_size) {
            None => Ok(()),
            Some(i) => Err(Error::bad_file(
                &s.path,
                format!(
                    "token id {} at position {i} is not below the model's vocabulary of {}; the shard was made with another tokenizer (prepare it again with the model's)",
                    s.get(i),
                    self.vocab_size
                ),
            )),
        }
    }

    pub fn tokens(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn windows(&self) -> u64 {
        *self.starts.last().expect("non-empty")
    }

    /// Window number `w` (0 <= w < windows()) as T + 1 tokens appended to `out`.
    fn window(&self, w: u64, out: &mut Vec<u32>) -> Result<()> {
        let i = self.starts.partition_point(|&s| s <= w) - 1;
        let start = (w - self.starts[i]) as usize;
        let from = out.len();
        self.shards[i].read_into(start, self.context + 1, out);
        if out[from..].iter().any(|&id| id as usize >= self.vocab_size) {
            return self.check_ids(&self.shards[i], start, self.context + 1);
        }
        Ok(())
    }

    /// Consecutive non-overlapping windows from the start of the split, at most `max` of them:
    /// the fixed set validation is measured on.
    pub fn sequential_windows(&self, max: usize) -> Vec<Vec<u32>> {
        let t = self.context;
        let mut out = Vec::new();
        for s in &self.shards {
            let mut start = 0;
            while start + t < s.len() && out.len() < max {
                let mut w = Vec::with_capacity(t + 1);
                s.read_into(start, t + 1, &mut w);
                out.push(w);
                start += t;
            }
        }
        out
    }
}

/// A batch: inputs and next-token targets, both (B, T) row-major.
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub context: usize,
}

pub struct BatchLoader {
    set: ShardSet,
    seed: u64,
    /// Batches drawn so far (by this rank): the checkpointed position.
    pub position: u64,
    batch: usize,
    rank: u64,
    world: u64,
}

impl BatchLoader {
    pub fn new(set: ShardSet, batch: usize, seed: u64, rank: usize, world: usize) -> Result<Self> {
        if set.windows() == 0 {
            return Err(Error::Config(format!(
                "the training shards hold {} tokens, fewer than one window of context {} + 1; lower the context or add data",
                set.tokens(),
                set.context
            )));
        }
        Ok(BatchLoader {
            set,
            seed,
            position: 0,
            batch,
            rank: rank as u64,
            world: world as u64,
        })
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        // One independent stream per (batch, rank): ranks read disjoint random windows.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.position * self.world + self.rank);
        self.position += 1;
        let t = self.set.context;
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        let mut w = Vec::with_capacity(t + 1);
        for _ in 0..self.batch {
            w.clear();
            self.set
                .window(rng.random_range(0..self.set.windows()), &mut w)?;
            inputs.extend_from_slice(&w[..t]);
            targets.extend_from_slice(&w[1..]);
        }
        Ok(Batch {
            inputs,
            targets,
            batch: self.batch,
            context: t,
        })
    }
}

/// Reads `meta.json` of a data directory, or describes a folder of llm.c-style shards
/// (`*train*.bin` / `*val*.bin`) that has none.
pub fn load_meta(dir: &Path) -> Result<DataMeta> {
    let path = dir.join("meta.json");
    if path.exists() {
        let text = crate::fsutil::read_to_string(&path)?;
        return serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("malformed meta.json: {e}")));
    }
    if !dir.is_dir() {
        return Err(Error::bad_file(
            dir,
            "data directory not found; make one with `chatforge data prepare`",
        ));
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = e
            .map_err(|e| Error::io(dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".bin") && name.contains("train") {
            train.push(name);
        } else if name.ends_with(".bin") && name.contains("val") {
            val.push(name);
        }
    }
    train.sort();
    val.sort();
    if train.is_empty() {
        return Err(Error::bad_file(dir, "no meta.json and no *train*.bin shards here; make a data directory with `chatforge data prepare`"));
    }
    let first = TokenShard::open(&dir.join(&train[0]))?;
    Ok(DataMeta {
        format: "llm.c".into(),
        // llm.c's u16 shards are GPT-2's vocabulary; its u32 shards Llama 3's.
        vocab_size: match first.width {
            super::shard::TokenWidth::U16 => 50257,
            super::shard::TokenWidth::U32 => 128256,
        },
        token_width: first.width,
        eot_id: 50256,
        train_tokens: 0,
        val_tokens: 0,
        train_shards: train,
        val_shards: val,
        input_bytes: 0,
        inputs: vec![],
    })
}
