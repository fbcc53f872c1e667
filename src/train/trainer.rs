//! The training loop shared by pre-training and fine-tuning: each optimizer step accumulates the
//! micro-batches' gradients, updates the weights (clipped, on the LR schedule), reports, and runs
//! what is due (validation, a sample, a checkpoint); then the run finishes.

use super::finish::{RunSummary, Tally};
use super::metrics::device_peak_flops;
use super::optim::grad_norm;
use super::run::{ConfigEdit, Run};
use super::schedule::LrSchedule;
use crate::config::RunConfig;
use crate::dist::{Collective, Single};
use crate::error::{Error, Result};
use crate::progress::{duration, human};
use indicatif::ProgressBar;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// Whether a periodic action (every `every` steps, 0 = never) falls on `step`.
fn due(step: usize, every: usize) -> bool {
    every > 0 && step.is_multiple_of(every)
}

/// Starts a new run in `run_dir`.
pub fn pretrain(cfg: RunConfig, run_dir: &Path) -> Result<RunSummary> {
    pretrain_on(cfg, run_dir, &Single)
}

/// Starts a new run in `run_dir` as one rank of a data-parallel job (every rank calls it).
pub fn pretrain_on(cfg: RunConfig, run_dir: &Path, coll: &dyn Collective) -> Result<RunSummary> {
    Run::new_fresh(cfg, run_dir, coll)?.train()
}

/// Continues the run of a checkpoint (or the newest checkpoint of a run directory), its config
/// changed by `overrides` (`KEY=VALUE`, e.g. more steps).
pub fn resume(path: &Path, overrides: &[String]) -> Result<RunSummary> {
    resume_on(path, &|c| c.apply_overrides(overrides), &Single)
}

/// [`resume`] as one rank of a data-parallel job, with as many ranks as the checkpointed run had.
pub fn resume_on(path: &Path, edit: ConfigEdit, coll: &dyn Collective) -> Result<RunSummary> {
    Run::new_resumed(path, edit, coll)?.train()
}

/// What one invocation of the loop is set to do.
struct Plan {
    total: usize,
    schedule: LrSchedule,
    flops_per_token: f64,
    /// Every rank's peak FLOP/s together (throughput counts every rank's tokens).
    peak: f64,
    /// Rank 0, which reports.
    lead: bool,
}

/// One optimizer step as it went.
struct Update {
    loss: f64,
    lr: f64,
    norm: f64,
    tokens: u64,
    seconds: f64,
    /// Preference tuning: the step's DPO metrics.
    pairs: Option<super::dpo::DpoStats>,
    /// Reinforcement learning: the step's reward and reply metrics.
    extra: serde_json::Map<String, serde_json::Value>,
}

/// " | reward accuracy A | margin M" of preference metrics, " | reward R" and " | pass@1 P" of
/// reinforcement learning's (empty without them).
fn preference_line(m: &serde_json::Map<String, serde_json::Value>) -> String {
    let num = |k: &str| m.get(k).and_then(|v| v.as_f64());
    match (num("rewards/accuracies"), num("rewards/margins")) {
        (Some(a), Some(g)) => format!(" | reward accuracy {a:.3} | margin {g:.3}"),
        _ => ["reward", "pass@1"]
            .iter()
            .filter_map(|k| num(k).map(|v| format!(" | {k} {v:.3}")))
            .collect(),
    }
}

/// A line above the progress bar (rank 0 only).
fn say(bar: &ProgressBar, lead: bool, s: String) {
    if !lead {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{s}");
    } else {
        bar.println(s);
    }
}

impl Run<'_> {
    pub(super) fn train(mut self) -> Result<RunSummary> {
        let world = self.coll.world();
        let total = self.cfg.total_steps(world);
        let plan = Plan {
            total,
            schedule: LrSchedule::from_config(&self.cfg.train, total),
            flops_per_token: self.state.model.flops_per_token(self.cfg.train.context),
            peak: device_peak_flops(&self.cfg, &self.device) * world as f64,
            lead: self.coll.is_lead(),
        };
        self.announce(&plan)?;
        // Only rank 0 shows progress.
        let bar = match plan.lead {
            true => crate::progress::steps_bar(total as u64),
            false => ProgressBar::hidden(),
        };
        bar.set_position(self.state.step as u64);
        let (before, n_params) = (self.state.elapsed_seconds, self.params.count());
        let mut tally = Tally::new(before, plan.flops_per_token, plan.peak, n_params);
        let mut prune_due = false;
        // Reinforcement learning measures the held-out pass@1 before its first step too.
        if self.cfg.is_rl() && self.state.step == 0 && plan.lead && self.cfg.eval.every > 0 {
            self.validate_and_log(&mut tally, &bar)?;
        }
        while self.state.step < total {
            let update = self.update(&plan, &bar, prune_due)?;
            self.report(&plan, &mut tally, &update, &bar)?;
            let (checkpointed, pause) = self.periodic(&plan, &mut tally, &bar)?;
            prune_due = checkpointed;
            if pause {
                break;
            }
        }
        self.finish(&plan, tally, &bar)
    }

    /// The model, what trains and how much a step takes, on one line (rank 0).
    fn announce(&self, plan: &Plan) -> Result<()> {
        let world = self.coll.world();
        let n_params = self.params.count();
        let m = &self.state.model;
        let trainable = match &self.lora {
            None => format!("{} parameters", human(n_params as f64)),
            Some(l) => format!(
                "LoRA rank {} on {}: {} trainable parameters, base of {} frozen",
                l.cfg.rank,
                crate::model::lora::resolve_targets(m, &l.cfg.targets)?.join(","),
                human(n_params as f64),
                human(l.base.values().map(|t| t.elem_count()).sum::<usize>() as f64)
            ),
        };
        let ranks = match world {
            1 => String::new(),
            n => format!(" x {n} processes"),
        };
        let per_step = if self.cfg.is_rl() {
            format!(
                "{} prompts x {} replies/step, in rows of {}",
                self.cfg.rl.prompts_per_step * world,
                self.cfg.rl.group,
                self.cfg.train.batch_size
            )
        } else if self.cfg.is_sft() {
            format!(
                "{} {}/step, padded to the longest (at most {} tokens)",
                self.cfg.train.batch_size * self.accum * world,
                if self.cfg.is_dpo() {
                    "pairs"
                } else {
                    "conversations"
                },
                self.cfg.train.context
            )
        } else {
            format!(
                "{} tokens/step ({} x {} x {} accum{ranks})",
                human(self.cfg.step_tokens(world) as f64),
                self.cfg.train.batch_size,
                self.cfg.train.context,
                self.accum
            )
        };
        if plan.lead {
            eprintln!(
                "model: {} layers, {} heads, width {}, vocab {}, context {} | {trainable} | {per_step} | {} steps",
                m.n_layer, m.n_head, m.n_embd, m.vocab_size, self.cfg.train.context, plan.total,
            );
        }
        Ok(())
    }

    /// One optimizer step: the gradients of its micro-batches, the blow-up guard, the older
    /// checkpoints pruned once this loss shows the newest sound (`prune_due`), clipping and AdamW.
    fn update(&mut self, plan: &Plan, bar: &ProgressBar, prune_due: bool) -> Result<Update> {
        self.profile.start()?;
        let t0 = Instant::now();
        let lr = plan.schedule.lr(self.state.step);
        let super::gradients::StepGradients {
            loss,
            grads,
            tokens,
            pairs,
            extra,
        } = self.step_gradients()?;
        let blow_up = super::guard::blow_up_loss(self.state.model.vocab_size);
        if !loss.is_finite() || loss > blow_up {
            bar.abandon();
            let step = self.state.step + 1;
            let e = super::guard::diverged(&self.run_dir, step, loss, blow_up, plan.lead);
            // No rank ends (and so none aborts the job) before rank 0 has moved the diverged
            // checkpoints aside.
            self.coll.barrier();
            return Err(e);
        }
        if prune_due && plan.lead {
            super::checkpoint::prune(&self.run_dir, self.cfg.checkpoint.keep)?;
        }
        let norm = grad_norm(&grads)?;
        self.profile.mark("grad norm")?;
        let clip = self.cfg.train.grad_clip;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.opt.step(&self.params.vars, &grads, lr, scale)?;
        drop(grads);
        self.profile.mark("optimizer")?;
        self.state.step += 1;
        self.state.optimizer_t = self.opt.t;
        self.state.loader_position = self.source.position();
        self.state.tokens_seen += tokens;
        Ok(Update {
            loss,
            lr,
            norm,
            tokens,
            seconds: t0.elapsed().as_secs_f64(),
            pairs,
            extra,
        })
    }

    /// The step into the totals, metrics.jsonl and the progress display.
    fn report(&self, plan: &Plan, t: &mut Tally, u: &Update, bar: &ProgressBar) -> Result<()> {
        t.train_secs += u.seconds;
        t.train_tokens += u.tokens;
        t.steps += 1;
        if t.first_loss.is_nan() {
            t.first_loss = u.loss;
        }
        t.last_loss = u.loss;
        let (step, total) = (self.state.step, plan.total);
        let tps = u.tokens as f64 / u.seconds;
        let (loss, lr, norm) = (u.loss, u.lr, u.norm);
        let mut record = json!({
            "kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
            "tokens_per_sec": tps, "mfu": tps * plan.flops_per_token / plan.peak,
            "tokens": self.state.tokens_seen, "elapsed": t.elapsed(), "total_steps": total,
        });
        let means = match &u.pairs {
            Some(p) => p.means(),
            None => u.extra.clone(),
        };
        let shown = preference_line(&means);
        record.as_object_mut().expect("an object").extend(means);
        self.log(record)?;
        let avg_tps = t.train_tokens as f64 / t.train_secs;
        let eta = (total - step) as f64 * t.train_secs / t.steps as f64;
        let msg = format!(
            "loss {loss:.4}{shown} | lr {lr:.2e} | {} tok/s | MFU {:.1}% | norm {norm:.2}",
            human(avg_tps),
            100.0 * avg_tps * plan.flops_per_token / plan.peak
        );
        bar.set_position(step as u64);
        bar.set_message(msg.clone());
        let every = self.cfg.train.log_every.max(1);
        let line_due = step.is_multiple_of(every) || step == 1 || step == total;
        if plan.lead && bar.is_hidden() && line_due {
            eprintln!("step {step}/{total} | {msg} | ETA {}", duration(eta));
        }
        Ok(())
    }

    /// Validation at this step (rank 0's), into the tally, the log and the plot.
    fn validate_and_log(&mut self, t: &mut Tally, bar: &ProgressBar) -> Result<()> {
        let Some(v) = self.validate()? else {
            return Ok(());
        };
        let step = self.state.step;
        let (vl, bpb) = (v.loss, v.bpb);
        self.state.last_val_loss = Some(vl);
        t.val = Some((vl, bpb));
        let mut record = json!({"kind": "val", "step": step, "val_loss": vl, "val_bpb": bpb});
        let shown = preference_line(&v.extra);
        t.val_pairs = v.extra.clone();
        record.as_object_mut().expect("an object").extend(v.extra);
        self.log(record)?;
        let bpb = bpb
            .map(|b| format!(" | {b:.4} bits/byte"))
            .unwrap_or_default();
        let line = match t.val_pairs.get("pass@1").and_then(|p| p.as_f64()) {
            // Reinforcement learning: its "loss" is 1 - pass@1.
            Some(p) => format!("step {step}: held-out pass@1 {p:.3}"),
            None => format!("step {step}: val loss {vl:.4}{bpb}{shown}"),
        };
        say(bar, true, line);
        if let Err(e) = self.plot() {
            say(
                bar,
                true,
                format!("warning: the loss plot was not written: {e}"),
            );
        }
        Ok(())
    }

    /// Validation, a sample and a checkpoint where due (and at the last step); a checkpoint too
    /// where the run pauses (`train.stop_at_step`) or a signal stops it, which ends the run with
    /// `Error::Interrupted`. Returns whether a checkpoint was written and whether to pause.
    fn periodic(&mut self, plan: &Plan, t: &mut Tally, bar: &ProgressBar) -> Result<(bool, bool)> {
        let step = self.state.step;
        let last = step == plan.total;
        let lead = plan.lead;
        // Validation, samples and the plot are rank 0's (the other ranks wait at the next
        // all-reduce).
        if lead && (due(step, self.cfg.eval.every) || last) {
            self.validate_and_log(t, bar)?;
        }
        if lead && (due(step, self.cfg.eval.sample_every) || last) {
            if let Some(s) = self.sample()? {
                self.log(json!({"kind": "sample", "step": step, "text": s}))?;
                let shown = s.replace('\n', "\n    ");
                say(bar, lead, format!("step {step} sample: {shown}"));
                t.samples.push(s);
            }
        }
        let pause = self.cfg.train.stop_at_step == step && !last;
        let interrupted = !last && self.stop_requested();
        let checkpointed = due(step, self.cfg.checkpoint.every) || last || pause || interrupted;
        if checkpointed {
            self.checkpoint_now(plan, t, interrupted, bar)?;
        }
        if pause {
            bar.finish_and_clear();
            if lead {
                eprintln!("stopped at step {step} as asked (train.stop_at_step); continue with --resume {}", self.run_dir.display());
            }
        }
        Ok((checkpointed, pause))
    }

    /// A checkpoint of this step (pruning the older ones at the last step); a signal's stop ends
    /// the run here.
    fn checkpoint_now(
        &mut self,
        plan: &Plan,
        t: &Tally,
        stop: bool,
        bar: &ProgressBar,
    ) -> Result<()> {
        self.state.elapsed_seconds = t.elapsed();
        let dir = self.checkpoint()?;
        let last = self.state.step == plan.total;
        if last && plan.lead {
            super::checkpoint::prune(&self.run_dir, self.cfg.checkpoint.keep)?;
        }
        if !stop {
            return Ok(());
        }
        bar.finish_and_clear();
        let cmd = self.cfg.command();
        Err(Error::Interrupted(format!(
            "stopped by {} after step {}/{}; checkpoint {} written. Continue with: chatforge {cmd} --resume {}",
            super::interrupt::signal_name(),
            self.state.step,
            plan.total,
            dir.display(),
            self.run_dir.display()
        )))
    }

    /// The end of the loop: the profile, and for a finished run the final model and the plot.
    fn finish(&self, plan: &Plan, tally: Tally, bar: &ProgressBar) -> Result<RunSummary> {
        bar.finish_and_clear();
        if let (true, Some(report)) = (plan.lead, self.profile.report()) {
            eprint!("{report}");
        }
        let card = self.card(&tally);
        if self.state.step < plan.total {
            let dir = self.run_dir.join("checkpoints");
            return Ok(self.summary(tally, dir, card));
        }
        let (model_dir, adapter_dir) = if plan.lead {
            let dirs = self.save_final(&card)?;
            if let Err(e) = self.plot() {
                eprintln!("warning: the loss plot was not written: {e}");
            }
            dirs
        } else {
            self.final_dirs()
        };
        // No rank ends before the final model is whole.
        self.coll.barrier();
        let mut summary = self.summary(tally, model_dir, card);
        summary.adapter_dir = adapter_dir;
        Ok(summary)
    }
}
