//! The `chatforge` command line: parse, then call the library.

use anyhow::{bail, Context, Result};
use chatforge::model::{save_model_dir, LoadedModel};
use chatforge::tokenizer::Tokenizer;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "chatforge", version, about = "Build your own ChatGPT: tokenizer, data, pre-training, evaluation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train, import or apply a BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Score a model on a task.
    Eval(EvalArgs),
    /// Re-write a model as a Hugging Face model directory.
    Convert(ConvertArgs),
}

#[derive(Subcommand)]
enum TokenizerCmd {
    /// Train a byte-level BPE tokenizer with <|endoftext|>, <|im_start|>, <|im_end|>.
    Train {
        /// Text files to learn the merges from.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        /// Directory to write tokenizer.json and tokenizer_config.json into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write GPT-2's tokenizer (from vocab.json/encoder.json + merges.txt/vocab.bpe) as a tokenizer directory.
    ImportGpt2 {
        #[arg(long)]
        vocab: PathBuf,
        #[arg(long)]
        merges: PathBuf,
        #[arg(long)]
        out: PathBuf,
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

#[derive(Args)]
struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Task: ppl (loss and bits per byte of a text file).
    #[arg(long, default_value = "ppl")]
    task: String,
    /// The task's data file.
    #[arg(long)]
    data: PathBuf,
    /// Windows scored together.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct ConvertArgs {
    /// Model directory to read.
    #[arg(long)]
    input: PathBuf,
    /// Directory to write (replaced atomically if it exists).
    #[arg(long)]
    output: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenizer(cmd) => tokenizer_cmd(cmd),
        Command::Eval(a) => eval_cmd(a),
        Command::Convert(a) => {
            let m = LoadedModel::load(&a.input, &candle_core::Device::Cpu)?;
            save_model_dir(&a.output, &m.cfg, &m.weights, m.tokenizer.as_ref())?;
            eprintln!("wrote {}", a.output.display());
            Ok(())
        }
    }
}

fn tokenizer_cmd(cmd: TokenizerCmd) -> Result<()> {
    match cmd {
        TokenizerCmd::Train { input, vocab_size, out } => {
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
        TokenizerCmd::ImportGpt2 { vocab, merges, out } => {
            let tok = Tokenizer::from_gpt2_files(&vocab, &merges)?;
            chatforge::fsutil::write_dir_atomic(&out, |d| tok.save_to_dir(d, 1024))?;
            eprintln!("wrote {}", out.join("tokenizer.json").display());
        }
        TokenizerCmd::Encode { tokenizer, text } => {
            let tok = Tokenizer::load(&tokenizer)?;
            println!("{}", serde_json::to_string(&tok.encode(&text)?)?);
        }
        TokenizerCmd::Decode { tokenizer, ids } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let ids: Vec<u32> = serde_json::from_str(&ids).context("--ids must be a JSON array of token ids")?;
            println!("{}", tok.decode(&ids)?);
        }
    }
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    if a.task != "ppl" {
        bail!("unknown task '{}'; available: ppl", a.task);
    }
    let device = chatforge::device(&a.device)?;
    let m = LoadedModel::load(&a.model, &device)?;
    let tok = m.tokenizer(&a.model)?;
    let text = chatforge::fsutil::read_to_string(&a.data)?;
    if text.trim().is_empty() {
        bail!("{}: file is empty: nothing to score", a.data.display());
    }
    let r = chatforge::eval::text_perplexity(&m.transformer()?, tok, &text, a.batch_size)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "ppl on {}: loss {:.4} | perplexity {:.2} | {:.4} bits/byte | {} tokens",
            a.data.display(),
            r.loss,
            r.loss.exp(),
            r.bits_per_byte,
            r.tokens
        );
    }
    Ok(())
}
