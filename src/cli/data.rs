//! `chatforge data`: corpora into token shards, and the built-in synthetic chat tasks as files.

use anyhow::Result;
use chatforge::tokenizer::Tokenizer;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCmd {
    /// Write the built-in synthetic chat tasks (arithmetic, spelling, count_letters) as JSONL:
    /// OUT/train.jsonl (all tasks) and OUT/test_TASK.jsonl (held-out questions).
    Synthetic {
        /// Tasks (default: all).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Training conversations per task.
        #[arg(long, default_value_t = 2000)]
        train: usize,
        /// Held-out conversations per task.
        #[arg(long, default_value_t = 100)]
        test: usize,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing, non-empty --out (only it, once the new one is complete).
        #[arg(long)]
        force: bool,
    },
    /// Tokenize text / JSONL / Parquet files or folders into train and validation shards.
    Prepare {
        /// Tokenizer directory or tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Input files or folders (.txt, .jsonl, .parquet).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output directory (must be new or empty).
        #[arg(long)]
        out: PathBuf,
        /// JSONL field / Parquet column holding the text.
        #[arg(long, default_value = "text")]
        field: String,
        /// Tokens per shard file.
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
        /// Validation tokens (the start of the token stream).
        #[arg(long, conflicts_with = "val_fraction")]
        val_tokens: Option<usize>,
        /// Fraction of the corpus for validation (at most 10M tokens).
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Replace an existing, non-empty --out (only it, once the new one is complete).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Synthetic {
            tasks,
            train,
            test,
            seed,
            out,
            force,
        } => {
            use chatforge::data::synthetic::{tasks_named, write_task_files};
            write_task_files(&out, &tasks_named(&tasks)?, (train, test), seed, force)?;
            eprintln!("wrote {}", out.join("train.jsonl").display());
        }
        DataCmd::Prepare {
            tokenizer,
            input,
            out,
            field,
            shard_tokens,
            val_tokens,
            val_fraction,
            force,
        } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let opts = chatforge::data::PrepareOptions {
                field,
                shard_tokens,
                val_tokens,
                val_fraction,
                force,
                ..Default::default()
            };
            let t0 = std::time::Instant::now();
            let meta = chatforge::data::prepare(&tok, &input, &out, &opts)?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "wrote {}: {} train tokens in {} shard(s), {} validation tokens ({:?} ids) | {:.1} MB/s",
                out.display(),
                meta.train_tokens,
                meta.train_shards.len(),
                meta.val_tokens,
                meta.token_width,
                meta.input_bytes as f64 / 1e6 / secs.max(1e-9)
            );
        }
    }
    Ok(())
}
