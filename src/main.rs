//! The `chatforge` command line: parse, then call the library.

mod cli;

use anyhow::{bail, Context, Result};

// candle allocates a fresh buffer for every op; glibc hands large ones back to the kernel each time
// (page faults on every step), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use chatforge::dist::Collective;
use chatforge::formats::{save_model_dir, LoadedModel};
use chatforge::tokenizer::Tokenizer;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "chatforge",
    version,
    about = "Build your own ChatGPT: tokenizer, data, pre-training, evaluation, generation and chat"
)]
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
    /// Write a model (HF directory or .gguf file) as a Hugging Face model directory.
    Convert(ConvertArgs),
    /// Turn corpora into token shards.
    #[command(subcommand)]
    Data(DataCmd),
    /// Pre-train a model from a run config (or continue one with --resume).
    Pretrain(cli::train::PretrainArgs),
    /// Fine-tune a model on chat data, every weight or LoRA adapters (or continue with --resume).
    Sft(Box<cli::train::SftArgs>),
    /// The whole pipeline on a small corpus: tokenizer, shards, pre-training, report.
    Speedrun(SpeedrunArgs),
    /// Measure prompt-processing and generation speed (tokens/s), as llama-bench does.
    Bench(BenchArgs),
    /// Continue a prompt (streamed to stdout).
    Generate(GenerateArgs),
    /// Talk to a model in the terminal.
    Chat(ChatArgs),
    /// Serve a model over an OpenAI-compatible API with a web chat page.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require 'Authorization: Bearer KEY' on /v1 requests.
    #[arg(long, env = "CHATFORGE_API_KEY")]
    api_key: Option<String>,
    /// The model id clients use (default: the file or directory name).
    #[arg(long)]
    model_name: Option<String>,
    /// Requests decoded together at most; more wait their turn.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Requests waiting beyond --max-batch at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 128)]
    max_queue: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also accept requests whose Host header names this (repeatable). On loopback only
    /// localhost, 127.0.0.1 and [::1] are accepted otherwise, which keeps web pages out.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers (and an idle connection stays open).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Seconds running replies may take to finish after SIGTERM/SIGINT before they are cut.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long, default_value_t = 0.0)]
    min_p: f64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl SamplingArgs {
    /// The generation options, with every sampling value checked (`--temperature nan` and
    /// `--repetition-penalty 0` are errors naming the flag).
    fn options(&self) -> Result<chatforge::infer::GenerateOptions> {
        let opts = chatforge::infer::GenerateOptions {
            max_new_tokens: self.max_tokens,
            sampling: chatforge::infer::SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_ids: vec![],
            stop_strings: self.stop.clone(),
        };
        if let Err((field, must)) = opts.sampling.validate() {
            bail!("--{} must be {must}", field.replace('_', "-"));
        }
        Ok(opts)
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length (synthetic token ids, see `infer::speed`).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Timed repetitions after one warm-up run; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights for the linear layers: f32, q8_0, q4_1 (chatforge's 4-bit blocks, f32 activations),
    /// or auto (as generate, chat and serve use them: q4_1 for a Q4_1 GGUF file, q8_0 for
    /// other quantized ones, f32 otherwise).
    #[arg(long, default_value = "auto")]
    weights: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt ("-" reads it from stdin).
    #[arg(long)]
    prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System prompt (with --chat).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct ChatArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Subcommand)]
enum DataCmd {
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

#[derive(Args)]
struct SpeedrunArgs {
    /// Text corpus (default: tiny Shakespeare, downloaded once into the cache).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Run directory.
    #[arg(long, default_value = "runs/speedrun")]
    out: PathBuf,
    /// Vocabulary of the tokenizer trained on the corpus.
    #[arg(long, default_value_t = chatforge::speedrun::SPEEDRUN_VOCAB)]
    vocab_size: usize,
    /// Override a config key of the pre-training run (repeatable), e.g. --set train.max_steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Fine-tuning steps on the synthetic chat tasks after pre-training (0 skips the stage).
    #[arg(long, default_value_t = 300)]
    sft_steps: usize,
    /// Training conversations per synthetic task.
    #[arg(long, default_value_t = 2000)]
    sft_train_per_task: usize,
    /// Held-out questions per synthetic task, scored before and after fine-tuning.
    #[arg(long, default_value_t = 100)]
    sft_test_per_task: usize,
    /// Chat files (.jsonl/.json) to fine-tune on together with the synthetic tasks.
    #[arg(long, num_args = 1..)]
    chat_data: Vec<PathBuf>,
    /// Override a config key of the fine-tuning run (repeatable), e.g. --sft-set train.lr=5e-4.
    #[arg(long = "sft-set", value_name = "KEY=VALUE")]
    sft_set: Vec<String>,
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

#[derive(Args)]
struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Task: ppl (loss and bits per byte of a text file), hellaswag, arc, lambada, gsm8k, or chat
    /// (exact match of the last assistant reply of each conversation in a chat file).
    #[arg(long, default_value = "ppl")]
    task: String,
    /// Score only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// GSM8K: longest answer in tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
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
    /// Model directory or .gguf file to read.
    #[arg(long)]
    input: PathBuf,
    /// Directory to write (must be new or empty).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing, non-empty --output (only it, once the new one is complete).
    #[arg(long)]
    force: bool,
}

// mimalloc's C API (bundled v2 header, `mi_option_e`): never return freed memory to the OS, so
// the same buffers are reused step after step instead of being faulted in afresh.
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() {
    let cli = Cli::parse();
    // Training reuses the same large buffers every step: keep them. A server or a chat session
    // returns memory after a large request instead.
    if matches!(
        cli.command,
        Command::Pretrain(_) | Command::Sft(_) | Command::Speedrun(_)
    ) {
        // SAFETY: plain setters of mimalloc options, called before any threads exist.
        unsafe {
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
        }
    }
    if matches!(cli.command, Command::Pretrain(_) | Command::Sft(_)) {
        if let Err(e) = chatforge::train::interrupt::install() {
            eprintln!("warning: cannot catch SIGINT/SIGTERM ({e}): a signal will stop training without a checkpoint");
        }
    }
    // Training runs data-parallel when launched by mpirun (MPI is initialised here, once, and
    // finalised when `coll` drops); everything else is a single process.
    let coll: Box<dyn Collective> = match &cli.command {
        Command::Pretrain(_) | Command::Sft(_) => match chatforge::dist::init() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
        _ => Box::new(chatforge::dist::Single),
    };
    if let Err(e) = run(cli, coll.as_ref()) {
        // Every rank stopped at the same step with the run directory in order: no abort needed,
        // and rank 0 says what happened.
        let orderly = match e.downcast_ref::<chatforge::Error>() {
            Some(chatforge::Error::Interrupted(_)) => {
                Some((chatforge::train::interrupt::exit_code(), ""))
            }
            Some(chatforge::Error::Diverged(_)) => Some((1, "error: ")),
            _ => None,
        };
        if let Some((code, prefix)) = orderly {
            if coll.is_lead() {
                eprintln!("{prefix}{e:#}");
            }
            drop(coll);
            std::process::exit(code);
        }
        match coll.world() {
            1 => eprintln!("error: {e:#}"),
            _ => eprintln!("error (rank {}): {e:#}", coll.rank()),
        }
        // The other ranks may be waiting for this one in a collective: end the whole job.
        coll.abort(1);
        drop(coll);
        std::process::exit(1);
    }
}

fn run(cli: Cli, coll: &dyn Collective) -> Result<()> {
    match cli.command {
        Command::Tokenizer(cmd) => tokenizer_cmd(cmd),
        Command::Eval(a) => eval_cmd(a),
        Command::Data(DataCmd::Synthetic {
            tasks,
            train,
            test,
            seed,
            out,
            force,
        }) => {
            use chatforge::data::synthetic::{generate, ALL_TASKS};
            let chosen: Vec<_> = ALL_TASKS
                .into_iter()
                .filter(|t| tasks.is_empty() || tasks.iter().any(|n| n == t.name()))
                .collect();
            if let Some(bad) = tasks
                .iter()
                .find(|n| !ALL_TASKS.iter().any(|t| t.name() == n.as_str()))
            {
                let names: Vec<&str> = ALL_TASKS.iter().map(|t| t.name()).collect();
                bail!("unknown task '{bad}'; available: {}", names.join(", "));
            }
            chatforge::fsutil::check_output(&out, "--out", &[], force)?;
            chatforge::fsutil::write_dir_atomic(&out, |dir| {
                let mut all = Vec::new();
                for t in chosen {
                    let (tr, te) = generate(t, train, test, seed);
                    let name = format!("test_{}.jsonl", t.name());
                    chatforge::data::chat::save_conversations(&dir.join(&name), &te)?;
                    eprintln!(
                        "{}: {} train, {} held out -> {}",
                        t.name(),
                        tr.len(),
                        te.len(),
                        out.join(name).display()
                    );
                    all.extend(tr);
                }
                chatforge::data::chat::save_conversations(&dir.join("train.jsonl"), &all)
            })?;
            eprintln!("wrote {}", out.join("train.jsonl").display());
            Ok(())
        }
        Command::Data(DataCmd::Prepare {
            tokenizer,
            input,
            out,
            field,
            shard_tokens,
            val_tokens,
            val_fraction,
            force,
        }) => {
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
            Ok(())
        }
        Command::Pretrain(a) => cli::train::pretrain(a, coll),
        Command::Sft(a) => cli::train::sft(*a, coll),
        Command::Speedrun(a) => {
            let stage = chatforge::speedrun::SftStage {
                steps: a.sft_steps,
                train_per_task: a.sft_train_per_task,
                test_per_task: a.sft_test_per_task,
                chat_data: a.chat_data,
                overrides: a.sft_set,
            };
            let report = chatforge::speedrun::speedrun(
                a.corpus.as_deref(),
                &a.out,
                a.vocab_size,
                &a.set,
                &stage,
            )?;
            println!("report: {}", report.display());
            Ok(())
        }
        Command::Generate(a) => generate_cmd(a),
        Command::Bench(a) => {
            let device = chatforge::device(&a.device)?;
            let m = LoadedModel::load(&a.model, &device)?;
            let model = match a.weights.as_str() {
                // What generate, chat and serve use.
                "auto" => m.inference_transformer()?,
                "f32" => m.transformer()?,
                w @ ("q8_0" | "q4_1") => {
                    let mut t = m.transformer()?;
                    t.quantize(match w {
                        "q8_0" => candle_core::quantized::GgmlDType::Q8_0,
                        _ => candle_core::quantized::GgmlDType::Q4_1,
                    })?;
                    t
                }
                w => bail!("--weights {w}: expected auto, f32, q8_0 or q4_1"),
            };
            let r =
                chatforge::infer::speed::measure(&model, a.prompt_tokens, a.new_tokens, a.runs)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: prompt processing (pp{}) {:.1} tok/s | generation (tg{}) {:.1} tok/s | median of {} runs after a warm-up, {} threads",
                    a.model.display(),
                    r.prompt_tokens,
                    r.prompt_tokens_per_sec,
                    r.new_tokens,
                    r.decode_tokens_per_sec,
                    r.runs,
                    rayon::current_num_threads()
                );
            }
            Ok(())
        }
        Command::Serve(a) => {
            let opts = chatforge::serve::ServeOptions {
                host: a.host,
                port: a.port,
                api_key: a.api_key,
                model_name: a.model_name,
                max_batch: a.max_batch,
                max_queue: a.max_queue,
                body_limit: a.max_body_bytes,
                device: a.device,
                allowed_hosts: a.allowed_hosts,
                timeouts: chatforge::serve::listen::Timeouts {
                    header: std::time::Duration::from_secs(a.header_timeout.max(1)),
                    body: std::time::Duration::from_secs(a.body_timeout.max(1)),
                    grace: std::time::Duration::from_secs(a.shutdown_grace),
                },
            };
            chatforge::serve::serve(&a.model, &opts)?;
            Ok(())
        }
        Command::Chat(a) => {
            let opts = a.sampling.options()?;
            let device = chatforge::device(&a.sampling.device)?;
            let m = LoadedModel::load(&a.model, &device)?;
            let model = m.inference_transformer()?;
            let chat = chatforge::chat::ChatModel::new(&model, m.tokenizer(&a.model)?)?;
            let stdin = std::io::stdin();
            chatforge::chat::repl(
                &chat,
                a.system.as_deref(),
                &opts,
                stdin.lock(),
                std::io::stdout(),
            )?;
            Ok(())
        }
        Command::Convert(a) => {
            chatforge::fsutil::check_output(&a.output, "--output", &[&a.input], a.force)?;
            let m = LoadedModel::load(&a.input, &candle_core::Device::Cpu)?;
            save_model_dir(&a.output, &m.cfg, &m.weights, m.tokenizer.as_ref())?;
            eprintln!("wrote {}", a.output.display());
            Ok(())
        }
    }
}

fn tokenizer_cmd(cmd: TokenizerCmd) -> Result<()> {
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
            println!("{}", serde_json::to_string(&tok.encode(&text)?)?);
        }
        TokenizerCmd::Decode { tokenizer, ids } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let ids: Vec<u32> =
                serde_json::from_str(&ids).context("--ids must be a JSON array of token ids")?;
            println!("{}", tok.decode(&ids)?);
        }
    }
    Ok(())
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    use std::io::Write;
    let mut opts = a.sampling.options()?;
    let device = chatforge::device(&a.sampling.device)?;
    let m = LoadedModel::load(&a.model, &device)?;
    let tok = m.tokenizer(&a.model)?;
    let model = m.inference_transformer()?;
    let prompt = if a.prompt == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?
    } else {
        a.prompt.clone()
    };
    let t0 = std::time::Instant::now();
    let mut first: Option<f64> = None;
    let mut print = |piece: &str| -> chatforge::Result<()> {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        let mut out = std::io::stdout().lock();
        out.write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| chatforge::Error::io("<stdout>", e))
    };
    let g = if a.chat {
        let chat = chatforge::chat::ChatModel::new(&model, tok)?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(chatforge::chat_template::Message::new("system", s));
        }
        msgs.push(chatforge::chat_template::Message::new("user", &prompt));
        chat.reply(&msgs, &opts, &mut print)?
    } else {
        let ids = tok.encode(&prompt)?;
        opts.stop_ids.extend(tok.eot_id());
        opts.max_new_tokens = opts
            .max_new_tokens
            .min(m.cfg.context.saturating_sub(ids.len() + 1));
        chatforge::infer::generate_text(&model, tok, &ids, &opts, &mut print)?
    };
    println!();
    let secs = t0.elapsed().as_secs_f64();
    let ttft = first.unwrap_or(secs);
    eprintln!(
        "[{} prompt tokens, first token after {:.2}s | {} new tokens, {:.1} tok/s decoding | finish: {:?}]",
        g.prompt_tokens,
        ttft,
        g.ids.len(),
        g.ids.len().saturating_sub(1) as f64 / (secs - ttft).max(1e-9),
        g.finish_reason
    );
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    use chatforge::eval::tasks;
    const TASKS: &str = "ppl, hellaswag, arc, lambada, gsm8k, chat";
    if !matches!(
        a.task.as_str(),
        "ppl" | "hellaswag" | "arc" | "lambada" | "gsm8k" | "chat"
    ) {
        bail!("unknown task '{}'; available: {TASKS}", a.task);
    }
    let device = chatforge::device(&a.device)?;
    let m = LoadedModel::load(&a.model, &device)?;
    let tok = m.tokenizer(&a.model)?;
    let model = m.transformer()?;
    let t0 = std::time::Instant::now();
    let (json, line) = match a.task.as_str() {
        "ppl" => {
            let text = chatforge::fsutil::read_to_string(&a.data)?;
            if text.trim().is_empty() {
                bail!("{}: file is empty: nothing to score", a.data.display());
            }
            let r = chatforge::eval::text_perplexity(&model, tok, &text, a.batch_size)?;
            let line = format!(
                "ppl on {}: loss {:.4} | perplexity {:.2} | {:.4} bits/byte | {} tokens",
                a.data.display(),
                r.loss,
                r.loss.exp(),
                r.bits_per_byte,
                r.tokens
            );
            (serde_json::to_value(&r)?, line)
        }
        "hellaswag" | "arc" => {
            let items = if a.task == "hellaswag" {
                tasks::load_hellaswag(&a.data, a.limit)?
            } else {
                tasks::load_arc(&a.data, a.limit)?
            };
            let bar = chatforge::progress::steps_bar(items.len() as u64);
            let r = tasks::multiple_choice(&model, tok, &a.task, &items, |_, _| bar.inc(1))?;
            bar.finish_and_clear();
            let line = format!(
                "{} ({} items): acc {:.4} | acc_norm {:.4}",
                a.task, r.items, r.acc, r.acc_norm
            );
            (serde_json::to_value(&r)?, line)
        }
        "lambada" => {
            let r = tasks::lambada(&model, tok, &a.data, a.limit)?;
            let line = format!(
                "lambada ({} items): acc {:.4} | ppl {:.2}",
                r.items, r.acc, r.ppl
            );
            (serde_json::to_value(&r)?, line)
        }
        "chat" => {
            let mut convs = chatforge::data::chat::load_conversations(
                &a.data,
                &chatforge::data::chat::ChatFields::default(),
            )?;
            convs.truncate(a.limit.unwrap_or(usize::MAX));
            let r = tasks::chat_exact_match(&model, tok, &convs, a.max_tokens)?;
            let line = format!("chat ({} items): exact match {:.4}", r.items, r.exact_match);
            (serde_json::to_value(&r)?, line)
        }
        _ => {
            let r = tasks::gsm8k(&model, tok, &a.data, a.limit, a.max_tokens)?;
            let line = format!(
                "gsm8k ({} items): exact match {:.4}",
                r.items, r.exact_match
            );
            (serde_json::to_value(&r)?, line)
        }
    };
    if a.json {
        println!("{json}");
    } else {
        println!("{line} ({:.1}s)", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
