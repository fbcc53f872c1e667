//! Supervised fine-tuning: chat files to padded, masked batches on the training loop, full or LoRA.

use super::finish::RunSummary;
use super::run::Run;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use std::path::Path;

/// Fine-tunes `cfg.model.init_from` on `cfg.sft.data` into `run_dir`.
pub fn sft(cfg: RunConfig, run_dir: &Path) -> Result<RunSummary> {
    sft_on(cfg, run_dir, &crate::dist::Single)
}

/// [`sft`] as one rank of a data-parallel job (every rank calls it).
pub fn sft_on(
    cfg: RunConfig,
    run_dir: &Path,
    coll: &dyn crate::dist::Collective,
) -> Result<RunSummary> {
    if !cfg.is_sft() {
        return Err(Error::Config(
            "fine-tuning needs chat data: --data FILE (sft.data)".into(),
        ));
    }
    Run::new_fresh(cfg, run_dir, coll)?.train()
}
