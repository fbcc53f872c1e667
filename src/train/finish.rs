//! The end of a run: the final model (and a LoRA run's adapter) written with its model card, the
//! loss plot, and the summary a finished run reports.

use super::run::Run;
use crate::error::Result;
use crate::formats::model_card::{CardResult, Library, ModelCard};
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// The model card written into `model_dir` (results added later are written with
    /// [`crate::formats::model_card::write_card`]).
    pub card: ModelCard,
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
    /// Preference tuning: the last validation's metrics (TRL's names).
    pub(super) val_pairs: serde_json::Map<String, serde_json::Value>,
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
            val_pairs: Default::default(),
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

    /// OUT/model (the trained or merged model) and, for LoRA, OUT/adapter, each with its card.
    pub(super) fn save_final(&self, card: &ModelCard) -> Result<(PathBuf, Option<PathBuf>)> {
        let model_dir = self.run_dir.join("model");
        let tok = self.tokenizer.as_ref();
        let Some(l) = &self.lora else {
            let w = self.params.tensors();
            crate::formats::save_model_dir(&model_dir, &self.state.model, &w, tok, card)?;
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
            &card.for_library(Library::Peft),
        )?;
        if !self.cfg.lora.merge {
            return Ok((adapter_dir.clone(), Some(adapter_dir)));
        }
        let merged = crate::model::lora::merge(&self.state.model, &l.cfg, &l.base, &adapter)?;
        crate::formats::save_model_dir(&model_dir, &self.state.model, &merged, tok, card)?;
        Ok((model_dir, Some(adapter_dir)))
    }

    /// How the run's model was made, in a sentence for its card.
    fn origin(&self) -> String {
        let cfg = &self.cfg;
        let base = &cfg.model.init_from;
        let on = match cfg.is_dpo() {
            _ if cfg.is_rl() => format!(
                "Tuned with reinforcement learning on {} (GRPO, {} replies per prompt, verifier rewards)",
                cfg.rl.task, cfg.rl.group
            ),
            true => format!(
                "Tuned on preference pairs ({}, beta {})",
                match cfg.dpo.loss {
                    crate::config::DpoLoss::Sigmoid => "DPO",
                    crate::config::DpoLoss::Ipo => "IPO",
                },
                cfg.dpo.beta
            ),
            false => "Fine-tuned on conversations".to_string(),
        };
        match (cfg.is_sft(), &self.lora) {
            (false, _) if base.is_empty() => format!(
                "Pre-trained from scratch by chatforge (the `{}` preset).",
                cfg.model.preset
            ),
            (false, _) => format!("Pre-trained by chatforge, starting from `{base}`."),
            (true, None) => format!("{on} by chatforge (every weight) from `{base}`."),
            (true, Some(l)) => format!(
                "{on} by chatforge with LoRA (rank {}, alpha {}, {}) from `{base}`.",
                l.cfg.rank,
                l.cfg.alpha,
                l.cfg.targets.join(", ")
            ),
        }
    }

    /// The model card of the run's model: how it was made, on what, and how it scored.
    pub(super) fn card(&self, t: &Tally) -> ModelCard {
        let cfg = &self.cfg;
        let name = self
            .run_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let base = &cfg.model.init_from;
        let origin = self.origin();
        let mut card = ModelCard::new(&name, &self.state.model, Library::Transformers, &origin);
        card.license = match cfg.model.license.as_str() {
            // The base's card: a local directory's, or the one the Hub model came with.
            "" => crate::formats::hub::resolve_model(Path::new(base))
                .ok()
                .and_then(|dir| crate::formats::model_card::card_license(&dir)),
            l => Some(l.to_string()),
        };
        card.base_model = match cfg.model.base_id.as_str() {
            "" => crate::formats::hub::hub_model(Path::new(base)).map(|r| r.repo),
            id => Some(id.to_string()),
        };
        card.tags
            .push(cfg.command().replace("pretrain", "pretraining"));
        card.data = match cfg.is_sft() {
            _ if cfg.is_rl() && cfg.sft.data.is_empty() => {
                vec![format!("chatforge's synthetic {} task", cfg.rl.task)]
            }
            true => cfg
                .sft
                .data
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            false => vec![cfg.data.dir.display().to_string()],
        };
        // The Hub datasets the data came from: the chat files, or the shards' inputs.
        let inputs = match cfg.is_sft() {
            true => card.data.clone(),
            false => crate::data::load_meta(&cfg.data.dir).map_or(vec![], |m| m.inputs),
        };
        for i in inputs {
            if let Some(r) = crate::formats::hub::HubRef::data_file(&i) {
                if !card.datasets.contains(&r.repo) {
                    card.datasets.push(r.repo);
                }
            }
        }
        card.steps = Some(self.state.step);
        card.tokens_seen = Some(self.state.tokens_seen);
        card.final_loss = t.last_loss.is_finite().then_some(t.last_loss);
        if let Some((loss, bpb)) = t.val {
            // The model-index names data by a short id: the files' names.
            let data = card
                .data
                .iter()
                .map(|d| {
                    Path::new(d)
                        .file_name()
                        .map_or(d.clone(), |f| f.to_string_lossy().into())
                })
                .collect::<Vec<_>>()
                .join(", ");
            let held_out = format!("held-out part of {}", card.data.join(", "));
            let mut result = |metric: &str, metric_name: &str, value: f64| {
                card.results.push(CardResult {
                    dataset: data.clone(),
                    dataset_name: held_out.clone(),
                    metric: metric.into(),
                    metric_name: metric_name.into(),
                    value,
                })
            };
            let metric = |k: &str| t.val_pairs.get(k).and_then(|v| v.as_f64());
            match metric("pass@1") {
                Some(p) => result(
                    "pass@1",
                    "held-out pass@1 (greedy reply, the task's verifier)",
                    p,
                ),
                None => result("loss", "validation loss", loss),
            }
            if let Some(b) = bpb {
                result("bits_per_byte", "validation bits per byte", b);
            }
            if let (Some(acc), Some(margin)) =
                (metric("rewards/accuracies"), metric("rewards/margins"))
            {
                result(
                    "accuracy",
                    "held-out reward accuracy (rewards/accuracies)",
                    acc,
                );
                result("margin", "held-out reward margin (rewards/margins)", margin);
            }
        }
        let keep = t.samples.len().saturating_sub(2);
        card.samples = t.samples[keep..].to_vec();
        card
    }

    pub(super) fn summary(&self, t: Tally, model_dir: PathBuf, card: ModelCard) -> RunSummary {
        let tokens_per_sec = if t.train_secs > 0.0 {
            t.train_tokens as f64 / t.train_secs
        } else {
            0.0
        };
        RunSummary {
            card,
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
        if self.cfg.is_rl() {
            super::plot::plot_curves(
                &self.run_dir.join("reward.png"),
                "reward",
                ["train reward", "held-out pass@1"],
                &pick("train", "reward"),
                &pick("val", "pass@1"),
            )?;
        }
        super::plot::plot_loss(
            &self.run_dir.join("loss.png"),
            &pick("train", "loss"),
            &pick("val", "val_loss"),
        )
    }
}
