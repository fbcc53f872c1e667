//! `chatforge dpo`: preference tuning (DPO or IPO) of a model on chosen/rejected pairs, every
//! weight or LoRA adapters, on the fine-tuning loop.

use super::train::{fine_tune, put, TuneArgs};
use anyhow::Result;
use chatforge::config::{DpoLoss, Objective, RunConfig};
use chatforge::dist::Collective;
use clap::Args;

#[derive(Args)]
pub struct DpoArgs {
    #[command(flatten)]
    tune: TuneArgs,
    /// How far the policy may move from the reference (TRL's beta).
    #[arg(long)]
    beta: Option<f64>,
    /// sigmoid (DPO) or ipo.
    #[arg(long)]
    loss: Option<DpoLoss>,
    /// The reference model (default: the model the run starts from; with LoRA, its frozen base).
    #[arg(long)]
    ref_model: Option<String>,
}

/// Preference tuning's defaults, below the config file (TRL's learning rate for full tuning).
fn dpo_defaults(lora: bool) -> Vec<String> {
    [
        format!("train.lr={}", if lora { 5e-5 } else { 1e-6 }),
        "train.max_steps=0".into(),
        "train.batch_size=4".into(),
        "train.context=1024".into(),
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

pub fn run(a: DpoArgs, coll: &dyn Collective) -> Result<()> {
    let flags = |cfg: &mut RunConfig| {
        cfg.sft.objective = Objective::Dpo;
        put(&mut cfg.dpo.beta, &a.beta);
        put(&mut cfg.dpo.loss, &a.loss);
        put(&mut cfg.dpo.ref_model, &a.ref_model);
    };
    fine_tune(&a.tune, dpo_defaults, &flags, coll)
}
