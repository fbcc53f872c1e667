//! The end of a run: the final model (and a LoRA run's adapter) written, the loss plot, and the
//! summary a finished run reports.

use super::run::Run;
use crate::error::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// The final model (the merged model of a LoRA run with merge, else its adapter).
    pub model_dir: PathBuf,
    /// A LoRA run's adapter directory (PEFT layout).
    pub adapter_dir: Option<PathBuf>,
    pub steps: usize,
    pub tokens_seen: u64,
    pub params: usize,
    pub seconds: f64,
    /// Training throughput (tokens/s over the optimizer steps, evaluation excluded).
    pub tokens_per_sec: f64,
    pub mfu: f64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub samples: Vec<String>,
}

/// Running totals of one invocation of the loop.
pub(super) struct Tally {
    pub(super) started: Instant,
    /// Training time of earlier invocations (before a resume).
    pub(super) elapsed_before: f64,
    pub(super) train_secs: f64,
    pub(super) train_tokens: u64,
    pub(super) steps: usize,
    pub(super) first_loss: f64,
    pub(super) last_loss: f64,
    pub(super) val: Option<(f64, Option<f64>)>,
    pub(super) samples: Vec<String>,
    pub(super) flops_per_token: f64,
    pub(super) peak: f64,
    pub(super) params: usize,
}

impl Tally {
    pub(super) fn new(elapsed_before: f64, flops_per_token: f64, peak: f64, params: usize) -> Self {
        Tally {
            started: Instant::now(),
            elapsed_before,
            train_secs: 0.0,
            train_tokens: 0,
            steps: 0,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            val: None,
            samples: Vec::new(),
            flops_per_token,
            peak,
            params,
        }
    }

    pub(super) fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }
}

impl Run<'_> {
    /// Where [`Run::save_final`] writes.
    pub(super) fn final_dirs(&self) -> (PathBuf, Option<PathBuf>) {
        let model_dir = self.run_dir.join("model");
        match &self.lora {
            None => (model_dir, None),
            Some(_) => {
                let adapter_dir = self.run_dir.join("adapter");
                if self.cfg.lora.merge {
                    (model_dir, Some(adapter_dir))
                } else {
                    (adapter_dir.clone(), Some(adapter_dir))
                }
            }
        }
    }

    /// OUT/model (the trained or merged model) and, for LoRA, OUT/adapter.
    pub(super) fn save_final(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let model_dir = self.run_dir.join("model");
        let tok = self.tokenizer.as_ref();
        let Some(l) = &self.lora else {
            let w = self.params.tensors();
            crate::formats::save_model_dir(&model_dir, &self.state.model, &w, tok)?;
            return Ok((model_dir, None));
        };
        let adapter_dir = self.run_dir.join("adapter");
        let adapter = self.params.tensors();
        crate::formats::peft::save_adapter(
            &adapter_dir,
            &self.state.model,
            &l.cfg,
            &adapter,
            &l.base_path,
        )?;
        if !self.cfg.lora.merge {
            return Ok((adapter_dir.clone(), Some(adapter_dir)));
        }
        let merged = crate::model::lora::merge(&self.state.model, &l.cfg, &l.base, &adapter)?;
        crate::formats::save_model_dir(&model_dir, &self.state.model, &merged, tok)?;
        Ok((model_dir, Some(adapter_dir)))
    }

    pub(super) fn summary(&self, t: Tally, model_dir: PathBuf) -> RunSummary {
        let tokens_per_sec = if t.train_secs > 0.0 {
            t.train_tokens as f64 / t.train_secs
        } else {
            0.0
        };
        RunSummary {
            run_dir: self.run_dir.clone(),
            model_dir,
            adapter_dir: None,
            steps: self.state.step,
            tokens_seen: self.state.tokens_seen,
            params: t.params,
            seconds: t.elapsed(),
            tokens_per_sec,
            mfu: tokens_per_sec * t.flops_per_token / t.peak,
            first_loss: t.first_loss,
            final_loss: t.last_loss,
            val_loss: t.val.map(|v| v.0),
            val_bpb: t.val.and_then(|v| v.1),
            samples: t.samples,
        }
    }

    pub(super) fn plot(&self) -> Result<()> {
        let Some(metrics) = &self.metrics else {
            return Ok(());
        };
        let recs = super::metrics::read_records(metrics.path())?;
        let pick = |kind: &str, key: &str| -> Vec<(f64, f64)> {
            recs.iter()
                .filter(|r| r["kind"] == kind)
                .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
                .collect()
        };
        super::plot::plot_loss(
            &self.run_dir.join("loss.png"),
            &pick("train", "loss"),
            &pick("val", "val_loss"),
        )
    }
}
