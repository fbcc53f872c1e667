//! `chatforge tokenizer`: train or import a BPE tokenizer, encode and decode with one.

use anyhow::{Context, Result};
use chatforge::tokenizer::Tokenizer;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TokenizerCmd {
    /// Train a byte-level BPE tokenizer with <|endoftext|>, <|im_start|>, <|im_end|>.
    Train {
        /// Text files to learn the merges from.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        /// Directory to write tokenizer.json and tokenizer_config.json into (must be new or empty).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing, non-empty --out (only it, once the new one is complete).
        #[arg(long)]
        force: bool,
    },
    /// Write GPT-2's tokenizer (from vocab.json/encoder.json + merges.txt/vocab.bpe) as a tokenizer directory.
    ImportGpt2 {
        #[arg(long)]
        vocab: PathBuf,
        #[arg(long)]
        merges: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing, non-empty --out (only it, once the new one is complete).
        #[arg(long)]
        force: bool,
    },
    /// Print the token ids of a text as JSON.
    Encode {
        /// A tokenizer directory, tokenizer.json, or model directory.
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        text: String,
    },
    /// Print the text of JSON token ids.
    Decode {
        #[arg(long)]
        tokenizer: PathBuf,
        /// Token ids as a JSON array, e.g. "[15496, 995]".
        #[arg(long)]
        ids: String,
    },
}

pub fn run(cmd: TokenizerCmd) -> Result<()> {
    match cmd {
        TokenizerCmd::Train {
            input,
            vocab_size,
            out,
            force,
        } => {
            let inputs: Vec<&std::path::Path> = input.iter().map(PathBuf::as_path).collect();
            chatforge::fsutil::check_output(&out, "--out", &inputs, force)?;
            let t0 = std::time::Instant::now();
            let tok = Tokenizer::train(&input, vocab_size)?;
            chatforge::fsutil::write_dir_atomic(&out, |d| tok.save_to_dir(d, 1024))?;
            eprintln!(
                "trained a {}-token BPE in {:.1}s; wrote {}",
                tok.vocab_size(),
                t0.elapsed().as_secs_f64(),
                out.join("tokenizer.json").display()
            );
        }
        TokenizerCmd::ImportGpt2 {
            vocab,
            merges,
            out,
            force,
        } => {
            chatforge::fsutil::check_output(&out, "--out", &[&vocab, &merges], force)?;
            let tok = Tokenizer::from_gpt2_files(&vocab, &merges)?;
            chatforge::fsutil::write_dir_atomic(&out, |d| tok.save_to_dir(d, 1024))?;
            eprintln!("wrote {}", out.join("tokenizer.json").display());
        }
        TokenizerCmd::Encode { tokenizer, text } => {
            let tok = Tokenizer::load(&tokenizer)?;
            super::output::line(serde_json::to_string(&tok.encode(&text)?)?)?;
        }
        TokenizerCmd::Decode { tokenizer, ids } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let ids: Vec<u32> =
                serde_json::from_str(&ids).context("--ids must be a JSON array of token ids")?;
            super::output::line(tok.decode(&ids)?)?;
        }
    }
    Ok(())
}
