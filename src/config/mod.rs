//! The run config: one TOML file per run, named model presets, and `--set key=value` overrides.
//! The resolved config is saved into the run directory (`config.toml`) and into every checkpoint.

mod fine_tune;
mod kinds;
mod ranges;

pub use fine_tune::{DpoSection, LoraSection, RlSection, SftSection};
pub use kinds::{DpoLoss, Objective, Precision, RlTask, Schedule};

use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
    pub eval: EvalSection,
    pub checkpoint: CheckpointSection,
    pub sft: SftSection,
    pub dpo: DpoSection,
    pub rl: RlSection,
    pub lora: LoraSection,
}

/// The model: a preset, optionally reshaped, or a model directory to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// One of `model::config::PRESETS`.
    pub preset: String,
    /// Start from the weights of this HF model directory instead of a fresh initialisation.
    pub init_from: String,
    /// The Hugging Face Hub id (`org/name`) of the model `init_from` holds: the base_model of the
    /// model card and what a LoRA adapter's config names (instead of a local path or, for a GGUF
    /// base, its conversion written beside the adapter).
    pub base_id: String,
    /// The licence the model card declares (an SPDX id the Hub knows, e.g. apache-2.0); empty =
    /// the base model's card's, else `other`.
    pub license: String,
    /// Shape overrides (0 = the preset's).
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_embd: usize,
    pub intermediate: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// A directory written by `chatforge data prepare` (or llm.c-style shards).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Tokens per sequence.
    pub context: usize,
    /// Sequences per micro-batch (what fits in memory at once).
    pub batch_size: usize,
    /// Tokens per optimizer step; a multiple of batch_size * context reached by gradient
    /// accumulation. 0 means one micro-batch per step.
    pub batch_tokens: usize,
    /// Optimizer steps; ignored when `total_tokens` is set.
    pub max_steps: usize,
    /// Train on this many tokens (steps = total_tokens / batch_tokens). 0 = use max_steps.
    pub total_tokens: usize,
    pub lr: f64,
    /// The schedule ends at lr * min_lr_ratio.
    pub min_lr_ratio: f64,
    /// "cosine" (warmup then cosine decay), "wsd" (warmup, stable, linear decay) or "constant".
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// For "wsd": the fraction of steps spent decaying at the end.
    pub decay_fraction: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub grad_clip: f64,
    pub seed: u64,
    /// cpu, cuda, cuda:N or auto.
    pub device: DeviceChoice,
    /// Compute precision: "f32", or "bf16" (bf16 weights and activations in the forward and
    /// backward passes; f32 master weights, gradients, optimizer state, norms and loss).
    pub dtype: Precision,
    /// Print a progress line every this many steps when not on a terminal.
    pub log_every: usize,
    /// Peak FLOP/s of one device (one process) for MFU; 0 = an estimate: the CPU's vector units
    /// and clock as /proc/cpuinfo reports them, or an H100-class GPU's dense bf16.
    pub peak_flops: f64,
    /// End this invocation after this step with a checkpoint, to continue later with --resume
    /// (for time-limited jobs); 0 = run to the end.
    pub stop_at_step: usize,
    /// Print where the steps' time went (data, forward, backward, all-reduce, gradient norm,
    /// optimizer) at the end, synchronizing the device between phases.
    pub profile: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Validation loss every this many steps (and at the end); 0 = only at the end.
    pub every: usize,
    /// Validation tokens per evaluation.
    pub tokens: usize,
    /// A text sample every this many steps (and at the end); 0 = only at the end.
    pub sample_every: usize,
    pub sample_tokens: usize,
    pub sample_prompt: String,
    pub sample_temperature: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub every: usize,
    /// Keep this many most recent checkpoints.
    pub keep: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            preset: "tiny".into(),
            init_from: String::new(),
            base_id: String::new(),
            license: String::new(),
            n_layer: 0,
            n_head: 0,
            n_kv_head: 0,
            n_embd: 0,
            intermediate: 0,
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            dir: PathBuf::from("data"),
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            context: 256,
            batch_size: 16,
            batch_tokens: 0,
            max_steps: 1000,
            total_tokens: 0,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            schedule: Schedule::Cosine,
            warmup_steps: 50,
            decay_fraction: 0.2,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1337,
            device: DeviceChoice::Cpu,
            dtype: Precision::F32,
            log_every: 10,
            peak_flops: 0.0,
            stop_at_step: 0,
            profile: false,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: 100,
            tokens: 65_536,
            sample_every: 500,
            sample_tokens: 96,
            sample_prompt: String::new(),
            sample_temperature: 0.8,
        }
    }
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 500,
            keep: 2,
        }
    }
}

/// Parses `--set` values: TOML literals (numbers, booleans, quoted strings); anything else is a string.
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// The config of a table (file keys, then overrides), an error naming where it came from.
fn from_table(table: toml::Table, where_: &str) -> Result<RunConfig> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config(format!("{where_}: {}", e.message())))
}

/// Sets each `section.key=value` of `settings` in `table`, every key checked against the config's
/// keys and every value given the type of the key's default (`--set data.dir=123` is a path,
/// `train.lr=1` a float).
fn set_keys(table: &mut toml::Table, settings: &[&String]) -> Result<()> {
    let defaults = match toml::Value::try_from(RunConfig::default()).expect("defaults serialize") {
        toml::Value::Table(t) => t,
        _ => unreachable!("a struct serializes to a table"),
    };
    let sections = || defaults.keys().cloned().collect::<Vec<_>>().join(", ");
    for o in settings {
        let (key, raw) = o.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "--set '{o}': expected KEY=VALUE, e.g. train.lr=3e-4"
            ))
        })?;
        let (section, field) = key.trim().split_once('.').ok_or_else(|| {
            Error::Config(format!(
                "--set '{o}': keys are section.key; sections: {}",
                sections()
            ))
        })?;
        let Some(toml::Value::Table(known)) = defaults.get(section) else {
            return Err(Error::Config(format!(
                "unknown config section '{section}' in --set {o}; sections: {}",
                sections()
            )));
        };
        if !known.contains_key(field) {
            return Err(Error::Config(format!(
                "unknown config key '{section}.{field}'; valid keys in [{section}]: {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let value = match (&known[field], parse_value(raw.trim())) {
            (toml::Value::String(_), v) if !v.is_str() => {
                toml::Value::String(raw.trim().to_string())
            }
            (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
            (_, v) => v,
        };
        table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("'{section}' must be a table")))?
            .insert(field.to_string(), value);
    }
    Ok(())
}

impl RunConfig {
    /// Reads a TOML file (or the defaults when `path` is None) and applies `KEY=VALUE` overrides,
    /// where KEY is `section.key` (e.g. `train.lr=3e-4`).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        Self::load_layered(path, &[], overrides)
    }

    /// As [`RunConfig::load`], with `base` (`KEY=VALUE`, e.g. a command's own defaults) applied
    /// to the keys the file does not set, before `overrides`.
    pub fn load_layered(
        path: Option<&Path>,
        base: &[String],
        overrides: &[String],
    ) -> Result<Self> {
        let mut cfg = Self::read_layered(path, base)?;
        cfg.apply_overrides(overrides)?;
        Ok(cfg)
    }

    /// A TOML file (or the defaults) with `base` applied to the keys the file does not set; not
    /// yet validated (flags and overrides may follow, see [`RunConfig::apply_overrides`]).
    pub fn read_layered(path: Option<&Path>, base: &[String]) -> Result<Self> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = crate::fsutil::read_to_string(p)?;
                toml::from_str(&text)
                    .map_err(|e| Error::bad_file(p, format!("invalid TOML: {e}")))?
            }
            None => toml::Table::new(),
        };
        let in_file = |table: &toml::Table, key: &str| {
            key.split_once('.').is_some_and(|(sec, field)| {
                table
                    .get(sec)
                    .and_then(|t| t.as_table())
                    .is_some_and(|t| t.contains_key(field))
            })
        };
        let unset: Vec<&String> = base
            .iter()
            .filter(|d| !in_file(&table, d.split_once('=').map_or(d.as_str(), |x| x.0)))
            .collect();
        set_keys(&mut table, &unset)?;
        let where_ = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "--set".into());
        from_table(table, &where_)
    }

    /// Applies `KEY=VALUE` overrides (`section.key`, as `--set` gives them) to this config, then
    /// checks the whole of it.
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<()> {
        if !overrides.is_empty() {
            let mut table = match toml::Value::try_from(&*self).expect("a config serializes") {
                toml::Value::Table(t) => t,
                _ => unreachable!("a struct serializes to a table"),
            };
            set_keys(&mut table, &overrides.iter().collect::<Vec<_>>())?;
            *self = from_table(table, "--set")?;
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let err = |m: String| Err(Error::Config(m));
        self.check_ranges()?;
        if t.context == 0 || t.batch_size == 0 {
            return err("train.context and train.batch_size must be positive".into());
        }
        if t.batch_size
            .checked_mul(t.context)
            .is_none_or(|n| n > 1 << 30)
        {
            return err(format!(
                "train.batch_size x train.context = {} x {} is more than 2^30 tokens a micro-batch",
                t.batch_size, t.context
            ));
        }
        if !t.batch_tokens.is_multiple_of(t.batch_size * t.context) {
            return err(format!(
                "train.batch_tokens ({}) must be a multiple of batch_size * context ({})",
                t.batch_tokens,
                t.batch_size * t.context
            ));
        }
        if t.max_steps == 0 && t.total_tokens == 0 && self.sft.data.is_empty() {
            return err("set train.max_steps or train.total_tokens".into());
        }
        if !self.sft.data.is_empty()
            && (self.sft.epochs.is_nan() || self.sft.epochs <= 0.0)
            && t.max_steps == 0
        {
            return err("sft.epochs must be positive (or set train.max_steps)".into());
        }
        if self.checkpoint.keep == 0 {
            return err("checkpoint.keep must be at least 1".into());
        }
        let id = &self.model.base_id;
        if !id.is_empty() && !crate::formats::hub::is_repo_id(id) {
            return err(format!(
                "model.base_id '{id}' is not a Hugging Face Hub id: ORG/NAME, e.g. HuggingFaceTB/SmolLM2-135M"
            ));
        }
        Ok(())
    }

    /// Tokens per optimizer step over all `world` ranks (`train.batch_tokens`, or one micro-batch
    /// per rank when it is 0).
    pub fn step_tokens(&self, world: usize) -> usize {
        match self.train.batch_tokens {
            0 => self.train.batch_size * self.train.context * world,
            n => n,
        }
    }

    /// Micro-batches per optimizer step on each of `world` ranks.
    pub fn accumulation(&self, world: usize) -> Result<usize> {
        let micro = self.train.batch_size * self.train.context;
        if self.train.batch_tokens == 0 {
            return Ok(1);
        }
        if !self.train.batch_tokens.is_multiple_of(micro * world) {
            return Err(Error::Config(format!(
                "train.batch_tokens ({}) must be a multiple of batch_size * context * processes ({micro} x {world})",
                self.train.batch_tokens
            )));
        }
        Ok(self.train.batch_tokens / (micro * world))
    }

    /// Whether this is a fine-tuning run (on chat files, pairs or a task's problems) rather than
    /// pre-training (on shards).
    pub fn is_sft(&self) -> bool {
        !self.sft.data.is_empty() || self.sft.objective == Objective::Rl
    }

    /// Whether this fine-tuning run learns from preference pairs (DPO).
    pub fn is_dpo(&self) -> bool {
        self.is_sft() && self.sft.objective == Objective::Dpo
    }

    /// Whether this fine-tuning run learns from rewards (GRPO).
    pub fn is_rl(&self) -> bool {
        self.sft.objective == Objective::Rl
    }

    /// The subcommand that continues this run.
    pub fn command(&self) -> &'static str {
        match (self.is_sft(), self.sft.objective) {
            (false, _) => "pretrain",
            (true, Objective::Sft) => "sft",
            (true, Objective::Dpo) => "dpo",
            (true, Objective::Rl) => "rl",
        }
    }

    /// Optimizer steps of the run on `world` ranks.
    pub fn total_steps(&self, world: usize) -> usize {
        if self.train.total_tokens > 0 {
            (self.train.total_tokens / self.step_tokens(world)).max(1)
        } else {
            self.train.max_steps
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}
