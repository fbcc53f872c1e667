//! `chatforge dpo`: preference tuning (DPO or IPO) of a model on chosen/rejected pairs, every
//! weight or LoRA adapters, on the fine-tuning loop.

use super::train::{fine_tune, put, tune_defaults, TuneArgs};
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

/// Preference tuning's defaults, below the config file: 4 pairs of up to 1024 tokens, lr 5e-5
/// with LoRA, 1e-6 (TRL's) for every weight.
fn dpo_defaults(lora: bool) -> Vec<String> {
    tune_defaults(if lora { 5e-5 } else { 1e-6 }, 4, 1024)
}

pub fn run(a: DpoArgs, coll: &dyn Collective) -> Result<()> {
    let flags = |cfg: &mut RunConfig| {
        put(&mut cfg.dpo.beta, &a.beta);
        put(&mut cfg.dpo.loss, &a.loss);
        put(&mut cfg.dpo.ref_model, &a.ref_model);
    };
    fine_tune(&a.tune, Objective::Dpo, dpo_defaults, &flags, coll)
}
