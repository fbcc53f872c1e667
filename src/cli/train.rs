//! `chatforge pretrain` and `chatforge sft`, and the flags fine-tuning shares with `dpo` and `rl`.

use anyhow::Result;
use chatforge::config::{Objective, RunConfig};
use chatforge::dist::Collective;
use chatforge::train::RunSummary;
use chatforge::DeviceChoice;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PretrainArgs {
    /// Run config (TOML). Without it the defaults are used (tiny preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, model/, loss.png).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue from a checkpoint directory or a run directory's newest checkpoint.
    #[arg(long, conflicts_with_all = ["config", "out"])]
    resume: Option<PathBuf>,
    /// Shorthand for --set train.device=...
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Serve the live dashboard of this run on 127.0.0.1:PORT (6007 without a value; 0: any
    /// free port) while it trains.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "6007")]
    dashboard: Option<u16>,
}

/// Starts the run's dashboard (on the lead rank) and says where it is.
fn start_dashboard(
    port: Option<u16>,
    out: Option<&Path>,
    resume: Option<&Path>,
    coll: &dyn Collective,
) -> chatforge::Result<()> {
    let (Some(port), true) = (port, coll.is_lead()) else {
        return Ok(());
    };
    let run_dir = match (out, resume) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(r)) => chatforge::train::run_dir_of(r),
        (None, None) => return Ok(()),
    };
    let d = chatforge::dashboard::spawn(vec![run_dir], port)?;
    eprintln!("dashboard at {}", d.url);
    Ok(())
}

/// Every rank of a data-parallel job (`mpirun -n N chatforge pretrain ...`) runs this.
pub fn pretrain(a: PretrainArgs, coll: &dyn Collective) -> Result<()> {
    start_dashboard(a.dashboard, a.out.as_deref(), a.resume.as_deref(), coll)?;
    let edit = |cfg: &mut RunConfig| {
        if let Some(d) = a.device {
            cfg.train.device = d;
        }
        cfg.apply_overrides(&a.set)
    };
    let summary = match &a.resume {
        Some(r) => chatforge::train::resume_on(r, &edit, coll)?,
        None => {
            let mut cfg = RunConfig::read_layered(a.config.as_deref(), &[])?;
            edit(&mut cfg)?;
            let out = a.out.as_deref().expect("clap requires --out");
            chatforge::train::pretrain_on(cfg, out, coll)?
        }
    };
    if coll.is_lead() {
        report(&summary);
    }
    Ok(())
}

/// What `sft`, `dpo` and `rl` share: the model, the data, the run directory and the training flags.
#[derive(Args)]
pub struct TuneArgs {
    /// The model to fine-tune: a chatforge or Hugging Face model directory, a .gguf file, or a
    /// Hub name.
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Data files (.jsonl or .json). sft: chat records (OpenAI `messages`, ShareGPT
    /// `conversations`, prompt/completion); dpo: preference pairs (prompt/chosen/rejected as text
    /// or message lists, or chosen/rejected transcripts such as HH-RLHF's); rl: GSM8K problems
    /// (the synthetic tasks need none).
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, model/ or adapter/).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue from a checkpoint directory or a run directory's newest checkpoint.
    #[arg(long, conflicts_with_all = ["config", "out", "model", "data"])]
    resume: Option<PathBuf>,
    /// Run config (TOML); flags and --set override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.warmup_steps=20 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Peak learning rate (sft: 2e-4 with LoRA, 5e-5 full; dpo: 5e-5 with LoRA, 1e-6 full).
    #[arg(long)]
    lr: Option<f64>,
    /// Passes over the training data.
    #[arg(long)]
    epochs: Option<f64>,
    /// Optimizer steps (instead of --epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Conversations (sft) or pairs (dpo) per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest conversation in tokens (longer ones are cut; at most the model's context).
    #[arg(long)]
    context: Option<usize>,
    /// Fraction of the data held out for validation.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Replace text in the data: FROM=TO, repeatable (e.g. --replace Vicuna=chatforge).
    #[arg(long, value_name = "FROM=TO")]
    replace: Vec<String>,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA scale numerator: adapters are scaled by alpha / rank.
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Modules to adapt, comma-separated PEFT names (q_proj,v_proj / c_attn) or all-linear.
    #[arg(long, value_delimiter = ',')]
    lora_targets: Vec<String>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// The Hugging Face Hub id of --model (ORG/NAME): the base_model of the model card and what
    /// the adapter's config names, so PEFT fetches the base from the Hub (without it a GGUF
    /// base is converted into OUT/base_model for PEFT).
    #[arg(long)]
    base_id: Option<String>,
    /// With LoRA, also write the merged full model to OUT/model.
    #[arg(long)]
    merge: bool,
    /// A prompt to sample a reply to at the end (default: the first held-out conversation's).
    #[arg(long)]
    sample_prompt: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Serve the live dashboard of this run on 127.0.0.1:PORT (6007 without a value; 0: any
    /// free port) while it trains.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "6007")]
    dashboard: Option<u16>,
}

#[derive(Args)]
pub struct SftArgs {
    #[command(flatten)]
    tune: TuneArgs,
    /// Field holding the prompt of prompt/completion records (e.g. question).
    #[arg(long)]
    prompt_field: Option<String>,
    /// Field holding the completion of prompt/completion records (e.g. answer).
    #[arg(long)]
    completion_field: Option<String>,
}

/// Fine-tuning's own defaults, below the config file: `lr`, `batch` rows and `context` tokens.
pub(super) fn tune_defaults(lr: f64, batch: usize, context: usize) -> Vec<String> {
    [
        format!("train.lr={lr}"),
        "train.max_steps=0".into(),
        format!("train.batch_size={batch}"),
        format!("train.context={context}"),
        "train.warmup_steps=10".into(),
        "train.weight_decay=0.0".into(),
        "train.min_lr_ratio=0.0".into(),
        "train.log_every=5".into(),
        "eval.every=50".into(),
        "eval.sample_every=0".into(),
        "eval.sample_tokens=64".into(),
        "eval.sample_temperature=0.0".into(),
        "checkpoint.every=200".into(),
    ]
    .into()
}

/// SFT's: 8 conversations of up to 2048 tokens, lr 2e-4 with LoRA, 5e-5 for every weight.
fn sft_defaults(lora: bool) -> Vec<String> {
    tune_defaults(if lora { 2e-4 } else { 5e-5 }, 8, 2048)
}

/// Put a flag's value into a config field.
pub(super) fn put<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *field = v.clone();
    }
}

impl TuneArgs {
    /// The flags set on the config (they win over the config file; `--set` wins over them).
    fn apply_flags(&self, cfg: &mut RunConfig) {
        if let Some(m) = &self.model {
            cfg.model.init_from = m.display().to_string();
        }
        if !self.data.is_empty() {
            cfg.sft.data = self.data.clone();
        }
        let (t, sft, lora) = (&mut cfg.train, &mut cfg.sft, &mut cfg.lora);
        put(&mut t.lr, &self.lr);
        put(&mut sft.epochs, &self.epochs);
        put(&mut t.max_steps, &self.max_steps);
        put(&mut t.batch_size, &self.batch_size);
        put(&mut t.context, &self.context);
        put(&mut t.device, &self.device);
        put(&mut sft.val_fraction, &self.val_fraction);
        if !self.replace.is_empty() {
            sft.replace = self.replace.join(";");
        }
        put(&mut cfg.model.base_id, &self.base_id);
        put(&mut lora.rank, &self.lora_rank);
        put(&mut lora.alpha, &self.lora_alpha);
        if !self.lora_targets.is_empty() {
            lora.targets = self.lora_targets.clone();
        }
        put(&mut lora.dropout, &self.lora_dropout);
        lora.merge |= self.merge;
        put(&mut cfg.eval.sample_prompt, &self.sample_prompt);
    }
}

/// A fine-tuning run (`sft`, `dpo` or `rl`): new, from the file over `defaults` (chosen by whether the
/// resolved config is a LoRA run), the shared flags, the command's own (`flags`), then `--set`;
/// or resumed with the flags and `--set` applied to its saved config, which must be of `objective`.
pub(super) fn fine_tune(
    a: &TuneArgs,
    objective: Objective,
    defaults: fn(bool) -> Vec<String>,
    flags: &dyn Fn(&mut RunConfig),
    coll: &dyn Collective,
) -> Result<()> {
    if a.resume.is_none() && a.data.is_empty() && objective != Objective::Rl {
        anyhow::bail!("chatforge {objective} needs its data: --data FILE...");
    }
    start_dashboard(a.dashboard, a.out.as_deref(), a.resume.as_deref(), coll)?;
    let edit = |cfg: &mut RunConfig| {
        // A run goes on with the command that started it.
        if let (Some(r), true) = (&a.resume, cfg.sft.objective != objective) {
            return Err(chatforge::Error::Config(format!(
                "{} is a {} run: continue it with chatforge {} --resume {}",
                r.display(),
                cfg.sft.objective,
                cfg.command(),
                r.display()
            )));
        }
        let iterations = cfg.rl.iterations;
        cfg.sft.objective = objective;
        a.apply_flags(cfg);
        flags(cfg);
        cfg.apply_overrides(&a.set)?;
        // A resumed RL run's position counts steps on batches reused that many times.
        if a.resume.is_some() && cfg.rl.iterations != iterations {
            return Err(chatforge::Error::Config(format!(
                "rl.iterations is {iterations} in the run being resumed and cannot change; start a new run to use {}",
                cfg.rl.iterations
            )));
        }
        Ok(())
    };
    let summary = match &a.resume {
        Some(r) => chatforge::train::resume_on(r, &edit, coll)?,
        None => {
            let config = |lora: bool| -> chatforge::Result<RunConfig> {
                let mut cfg = RunConfig::read_layered(a.config.as_deref(), &defaults(lora))?;
                edit(&mut cfg)?;
                Ok(cfg)
            };
            // The defaults depend on whether the resolved config (file, flags, --set) is a LoRA run.
            let cfg = match config(false)? {
                full if full.lora.rank == 0 => full,
                _ => config(true)?,
            };
            let out = a.out.as_deref().expect("clap requires --out");
            chatforge::train::sft_on(cfg, out, coll)?
        }
    };
    if !coll.is_lead() {
        return Ok(());
    }
    report(&summary);
    if let Some(ad) = &summary.adapter_dir {
        eprintln!("LoRA adapter (PEFT layout) in {}", ad.display());
    }
    Ok(())
}

pub fn sft(a: SftArgs, coll: &dyn Collective) -> Result<()> {
    let flags = |cfg: &mut RunConfig| {
        put(&mut cfg.sft.prompt_field, &a.prompt_field);
        put(&mut cfg.sft.completion_field, &a.completion_field);
    };
    fine_tune(&a.tune, Objective::Sft, sft_defaults, &flags, coll)
}

fn report(summary: &RunSummary) {
    eprintln!(
        "done: {} steps, {} tokens in {} | {:.0} tok/s | final loss {:.4}{} | model in {}",
        summary.steps,
        summary.tokens_seen,
        chatforge::progress::duration(summary.seconds),
        summary.tokens_per_sec,
        summary.final_loss,
        summary
            .val_loss
            .map(|v| format!(" | val loss {v:.4}"))
            .unwrap_or_default(),
        summary.model_dir.display()
    );
}
