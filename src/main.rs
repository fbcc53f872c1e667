//! The `chatforge` command line: parse, then call the library.

mod cli;

use anyhow::Result;

// candle allocates a fresh buffer for every op; glibc hands large ones back to the kernel each time
// (page faults on every step), mimalloc reuses them (its options per subcommand: cli/allocator.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use chatforge::dist::Collective;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatforge",
    version,
    about = "Build your own ChatGPT: tokenizer, data, pre-training, evaluation, generation and chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for the CPU kernels (default: the physical cores; also CHATFORGE_THREADS).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    threads: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Train, import or apply a BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(cli::tokenizer::TokenizerCmd),
    /// Score a model on a task.
    Eval(cli::eval::EvalArgs),
    /// Write a model (HF directory, adapter or .gguf file) as a Hugging Face directory or a GGUF file.
    Convert(cli::convert::ConvertArgs),
    /// Turn corpora into token shards.
    #[command(subcommand)]
    Data(cli::data::DataCmd),
    /// Pre-train a model from a run config (or continue one with --resume).
    Pretrain(cli::train::PretrainArgs),
    /// Fine-tune a model on chat data, every weight or LoRA adapters (or continue with --resume).
    Sft(Box<cli::train::SftArgs>),
    /// Tune a model on preference pairs (chosen over rejected replies) with DPO or IPO, every
    /// weight or LoRA adapters (or continue with --resume).
    Dpo(Box<cli::dpo::DpoArgs>),
    /// Reinforcement learning with verifiable rewards (GRPO): sample groups of replies to a task's
    /// problems, reward them with its verifier, and move toward the better ones.
    Rl(Box<cli::rl::RlArgs>),
    /// The whole pipeline on a small corpus: tokenizer, shards, pre-training, report.
    Speedrun(cli::speedrun::SpeedrunArgs),
    /// Measure prompt-processing and generation speed (tokens/s), as llama-bench does.
    Bench(cli::bench::BenchArgs),
    /// Continue a prompt (streamed to stdout).
    Generate(cli::generate::GenerateArgs),
    /// Talk to a model in the terminal.
    Chat(cli::chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible API with a web chat page.
    Serve(cli::serve::ServeArgs),
    /// Watch training runs live in the browser: loss, validation, lr, tokens/s, MFU, ETA, samples.
    Dashboard(cli::dashboard::DashboardArgs),
}

fn main() {
    let cli = Cli::parse();
    // Before any pool starts: every pool sizes itself from this.
    if let Err(e) = chatforge::threads::configure(cli.threads.map(|n| n as usize)) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    cli::allocator::configure_in_main();
    if matches!(
        cli.command,
        Command::Pretrain(_) | Command::Sft(_) | Command::Dpo(_) | Command::Rl(_)
    ) {
        if let Err(e) = chatforge::train::interrupt::install() {
            eprintln!("warning: cannot catch SIGINT/SIGTERM ({e}): a signal will stop training without a checkpoint");
        }
    }
    // Training runs data-parallel when launched by mpirun (MPI is initialised here, once, and
    // finalised when `coll` drops); everything else is a single process.
    let coll: Box<dyn Collective> = match &cli.command {
        Command::Pretrain(_) | Command::Sft(_) | Command::Dpo(_) | Command::Rl(_) => {
            match chatforge::dist::init() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
            }
        }
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
        Command::Tokenizer(cmd) => cli::tokenizer::run(cmd),
        Command::Eval(a) => cli::eval::run(a),
        Command::Data(cmd) => cli::data::run(cmd),
        Command::Pretrain(a) => cli::train::pretrain(a, coll),
        Command::Sft(a) => cli::train::sft(*a, coll),
        Command::Dpo(a) => cli::dpo::run(*a, coll),
        Command::Rl(a) => cli::rl::run(*a, coll),
        Command::Speedrun(a) => cli::speedrun::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Dashboard(a) => cli::dashboard::run(a),
    }
}
