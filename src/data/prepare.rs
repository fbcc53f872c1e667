//! `chatforge data prepare`: a corpus in, token shards out. Pieces of text are tokenized in parallel
//! on all cores, documents are separated by the end-of-text token (put in front of each document, as
//! llm.c does), and the first tokens of the stream form the validation split.

use super::shard::{write_shard, TokenWidth};
use super::sources::{collect_inputs, for_each_piece, InputFile};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// JSONL field / Parquet column holding the text.
    pub field: String,
    pub shard_tokens: usize,
    /// Validation tokens; when `None`, `val_fraction` of the corpus (at most `max_val_tokens`).
    pub val_tokens: Option<usize>,
    pub val_fraction: f64,
    pub max_val_tokens: usize,
    /// Replace an existing, non-empty output directory (`--force`).
    pub force: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            field: "text".into(),
            shard_tokens: 100_000_000,
            val_tokens: None,
            val_fraction: 0.1,
            max_val_tokens: 10_000_000,
            force: false,
        }
    }
}

/// `meta.json` of a data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataMeta {
    pub format: String,
    pub vocab_size: usize,
    pub token_width: TokenWidth,
    pub eot_id: u32,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_shards: Vec<String>,
    pub val_shards: Vec<String>,
    pub input_bytes: u64,
    pub inputs: Vec<String>,
}

pub const META_FORMAT: &str = "chatforge-token-shards-v1";

struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    width: TokenWidth,
    shard_tokens: usize,
    buf: Vec<u32>,
    written: Vec<String>,
    total: usize,
}

impl ShardWriter {
    fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let room = self.shard_tokens - self.buf.len();
            let n = room.min(tokens.len());
            self.buf.extend_from_slice(&tokens[..n]);
            tokens = &tokens[n..];
            if self.buf.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = format!("{}_{:06}.bin", self.split, self.written.len());
        write_shard(&self.dir.join(&name), &self.buf, self.width)?;
        self.total += self.buf.len();
        self.written.push(name);
        self.buf.clear();
        Ok(())
    }
}

/// Tokenizes `inputs` into shards in `out` (which must not exist yet, or be empty, unless
/// `opts.force`; it may not contain an input either, see `fsutil::check_output`). The tokenizer
/// files are copied next to the shards so that the directory says how it was made.
pub fn prepare(
    tok: &Tokenizer,
    inputs: &[PathBuf],
    out: &Path,
    opts: &PrepareOptions,
) -> Result<DataMeta> {
    if opts.shard_tokens == 0 {
        return Err(Error::Config("--shard-tokens must be positive".into()));
    }
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(Error::Config(format!(
            "--val-fraction must be in [0, 1), got {}",
            opts.val_fraction
        )));
    }
    // Hub files (hf://datasets/...) are read from the cache, downloaded first when not there;
    // meta.json names them as given.
    let mut hub_names = std::collections::HashMap::new();
    let inputs: Vec<PathBuf> = inputs
        .iter()
        .map(|p| {
            let local = crate::formats::hub::resolve_data_file(p)?;
            if local != *p {
                hub_names.insert(local.clone(), p.display().to_string());
            }
            Ok(local)
        })
        .collect::<Result<_>>()?;
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    crate::fsutil::check_output(out, "--out", &input_refs, opts.force)?;
    let eot = tok.eot_id().ok_or_else(|| {
        Error::Tokenizer("the tokenizer has no <|endoftext|> token to separate documents".into())
    })?;
    let files = collect_inputs(&inputs)?;
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let width = TokenWidth::for_vocab(tok.vocab_size());
    let mut meta = None;
    crate::fsutil::write_dir_atomic(out, |dir| {
        meta = Some(prepare_into(
            tok,
            eot,
            &files,
            total_bytes,
            width,
            dir,
            opts,
        )?);
        tok.save_to_dir(dir, 1024)?;
        let m = meta.as_mut().expect("set above");
        for (input, f) in m.inputs.iter_mut().zip(&files) {
            if let Some(name) = hub_names.get(&f.path) {
                input.clone_from(name);
            }
        }
        crate::fsutil::write_atomic(
            &dir.join("meta.json"),
            serde_json::to_string_pretty(m).expect("json").as_bytes(),
        )
    })?;
    Ok(meta.expect("prepare_into ran"))
}

fn prepare_into(
    tok: &Tokenizer,
    eot: u32,
    files: &[InputFile],
    total_bytes: u64,
    width: TokenWidth,
    dir: &Path,
    opts: &PrepareOptions,
) -> Result<DataMeta> {
    let writer = |split| ShardWriter {
        dir: dir.to_path_buf(),
        split,
        width,
        shard_tokens: opts.shard_tokens,
        buf: Vec::new(),
        written: Vec::new(),
        total: 0,
    };
    let (mut train, mut val) = (writer("train"), writer("val"));
    let bar = crate::progress::bytes_bar(total_bytes, "tokenizing");
    // Validation target in tokens; with a fraction it is estimated from the first batch's
    // tokens-per-byte (exact when the corpus fits in one batch).
    let mut val_target: Option<usize> = opts.val_tokens;
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut tokens_so_far = 0usize;
    const BATCH_BYTES: usize = 16 << 20;

    let mut flush = |pending: &mut Vec<(String, bool)>, pending_bytes: &mut usize| -> Result<()> {
        let encoded = encode_pieces(tok, eot, pending);
        let batch_tokens: usize = encoded
            .iter()
            .map(|r| r.as_ref().map_or(0, |v| v.len()))
            .sum();
        if val_target.is_none() {
            let est = batch_tokens as f64 / (*pending_bytes).max(1) as f64 * total_bytes as f64;
            val_target = Some(((est * opts.val_fraction) as usize).min(opts.max_val_tokens));
        }
        let target = val_target.expect("set above");
        for ids in encoded {
            let ids = ids?;
            let to_val = target
                .saturating_sub(val.total + val.buf.len())
                .min(ids.len());
            val.push(&ids[..to_val])?;
            train.push(&ids[to_val..])?;
        }
        tokens_so_far += batch_tokens;
        bar.inc(*pending_bytes as u64);
        bar.set_message(format!(
            "{} tokens",
            crate::progress::human(tokens_so_far as f64)
        ));
        pending.clear();
        *pending_bytes = 0;
        Ok(())
    };

    for file in files {
        for_each_piece(file, &opts.field, |piece| {
            pending_bytes += piece.text.len();
            pending.push((piece.text, piece.doc_start));
            if pending_bytes >= BATCH_BYTES {
                flush(&mut pending, &mut pending_bytes)?;
            }
            Ok(())
        })?;
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut pending_bytes)?;
    }
    bar.finish_and_clear();
    train.flush()?;
    val.flush()?;
    if train.total == 0 {
        return Err(Error::Config(
            "the corpus is too small: every token went to the validation split; lower --val-tokens/--val-fraction".into(),
        ));
    }
    Ok(DataMeta {
        format: META_FORMAT.into(),
        vocab_size: tok.vocab_size(),
        token_width: width,
        eot_id: eot,
        train_tokens: train.total,
        val_tokens: val.total,
        train_shards: train.written,
        val_shards: val.written,
        input_bytes: total_bytes,
        inputs: files.iter().map(|f| f.path.display().to_string()).collect(),
    })
}

/// The ids of each piece, tokenized over the cores; a document's first piece starts with the
/// end-of-text token that separates it from the one before.
fn encode_pieces(tok: &Tokenizer, eot: u32, pieces: &[(String, bool)]) -> Vec<Result<Vec<u32>>> {
    pieces
        .par_iter()
        .map(|(text, doc_start)| {
            let mut ids = Vec::with_capacity(text.len() / 3 + 1);
            if *doc_start {
                ids.push(eot);
            }
            ids.extend(tok.encode(text)?);
            Ok(ids)
        })
        .collect()
}
