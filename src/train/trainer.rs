//! The training loop shared by pre-training (and, later, fine-tuning): gradient accumulation,
//! clipping, AdamW, the LR schedule, periodic validation / samples / checkpoints, progress, metrics.

use super::checkpoint::{save_checkpoint, CheckpointWeights, TrainerState};
use super::metrics::MetricsLog;
use super::optim::{grad_norm, AdamW};
use super::schedule::LrSchedule;
use super::source::Source;
use crate::config::RunConfig;
use crate::dist::{Collective, Single};
use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::model::params::Params;
use crate::model::{ModelConfig, Transformer};
use crate::progress::{duration, human};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A LoRA run's fixed parts.
pub(super) struct LoraRun {
    pub cfg: LoraConfig,
    pub base: BTreeMap<String, Tensor>,
    /// The frozen base cast once for a bf16 run (its weights never change).
    pub base_bf16: Option<BTreeMap<String, Tensor>>,
    /// The base model as given (written into adapter_config.json).
    pub base_path: String,
}

impl LoraRun {
    pub fn new(
        cfg: LoraConfig,
        base: BTreeMap<String, Tensor>,
        base_path: String,
        dtype: &str,
    ) -> Result<Self> {
        let base_bf16 = match dtype {
            "bf16" => Some(cast_all(base.clone(), DType::BF16)?),
            _ => None,
        };
        Ok(LoraRun {
            cfg,
            base,
            base_bf16,
            base_path,
        })
    }
}

/// Every tensor cast to `dtype` (a graph op, so gradients of the casts reach Vars).
fn cast_all(w: BTreeMap<String, Tensor>, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
    if dtype == DType::F32 {
        return Ok(w);
    }
    w.into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect()
}

/// The model over the run's parameters: all of them, or a frozen base with trainable adapters.
pub(super) fn build_model(
    cfg: &ModelConfig,
    params: &Params,
    lora: Option<&LoraRun>,
    dtype: DType,
) -> Result<Transformer> {
    // Casting a Var is an op of the graph: the gradients of the cast weights reach the f32 Vars.
    let trainable = cast_all(params.tensors(), dtype)?;
    match lora {
        None => Transformer::new(cfg, &trainable),
        Some(l) => {
            let ad = crate::model::lora::adapters(cfg, &l.cfg, &trainable)?;
            match (&l.base_bf16, dtype) {
                (Some(b), DType::BF16) => Transformer::with_adapters(cfg, b, ad),
                _ => Transformer::with_adapters(cfg, &cast_all(l.base.clone(), dtype)?, ad),
            }
        }
    }
}

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
struct Tally {
    started: Instant,
    /// Training time of earlier invocations (before a resume).
    elapsed_before: f64,
    train_secs: f64,
    train_tokens: u64,
    steps: usize,
    first_loss: f64,
    last_loss: f64,
    val: Option<(f64, Option<f64>)>,
    samples: Vec<String>,
    flops_per_token: f64,
    peak: f64,
    params: usize,
}

impl Tally {
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }
}

pub(super) struct Run<'c> {
    pub(super) cfg: RunConfig,
    /// The ranks of a data-parallel run (a single process: `Single`).
    pub(super) coll: &'c dyn Collective,
    /// Micro-batches per optimizer step on this rank.
    pub(super) accum: usize,
    pub(super) run_dir: PathBuf,
    pub(super) device: Device,
    pub(super) params: Params,
    pub(super) model: Transformer,
    pub(super) opt: AdamW,
    pub(super) source: Source,
    /// Fine-tuning with LoRA: the frozen base and the adapter's config; `params` holds the adapter.
    pub(super) lora: Option<LoraRun>,
    pub(super) tokenizer: Option<Tokenizer>,
    pub(super) token_bytes: Vec<u32>,
    pub(super) state: TrainerState,
    /// metrics.jsonl (rank 0 only).
    pub(super) metrics: Option<MetricsLog>,
    /// `train.profile`: time per phase of the step.
    pub(super) profile: super::profile::StepProfile,
}

use super::setup::device_peak_flops;

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

/// Continues the run of a checkpoint (or the newest checkpoint of a run directory).
pub fn resume(path: &Path, overrides: &[String]) -> Result<RunSummary> {
    resume_on(path, overrides, &Single)
}

/// [`resume`] as one rank of a data-parallel job, with as many ranks as the checkpointed run had.
pub fn resume_on(path: &Path, overrides: &[String], coll: &dyn Collective) -> Result<RunSummary> {
    Run::new_resumed(path, overrides, coll)?.train()
}

/// Sets every parameter to rank 0's values (one broadcast of all of them, in name order).
pub(super) fn broadcast_params(params: &Params, coll: &dyn Collective) -> Result<()> {
    if !coll.communicates() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(params.count());
    for v in params.vars.values() {
        buf.extend(v.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    coll.broadcast(&mut buf, 0);
    let mut off = 0;
    for v in params.vars.values() {
        let n = v.elem_count();
        let t = Tensor::from_slice(&buf[off..off + n], v.shape(), v.device())?;
        v.set(&t.to_dtype(v.dtype())?)?;
        off += n;
    }
    Ok(())
}

impl Run<'_> {
    /// Sums the gradients over the ranks and divides by their number (one all-reduce of all of them
    /// in name order; `BTreeMap` order is the same on every rank).
    fn average_gradients(
        &self,
        grads: BTreeMap<String, Tensor>,
        totals: &mut [f64],
    ) -> Result<BTreeMap<String, Tensor>> {
        let world = self.coll.world();
        let mut flat = Vec::with_capacity(grads.len());
        let mut layout = Vec::with_capacity(grads.len());
        for (name, g) in grads {
            flat.push(g.flatten_all()?.to_dtype(DType::F32)?);
            layout.push((name, g.shape().clone(), g.dtype(), g.elem_count()));
        }
        // The loss, the token count and the buffer length (every rank must send as many).
        let n = layout.iter().map(|l| l.3).sum::<usize>() as f64;
        let mut t = totals.to_vec();
        t.push(n);
        self.coll.all_reduce_sum_f64(&mut t);
        if t.pop() != Some(n * world as f64) {
            return Err(Error::Training(
                "the ranks disagree on the gradients' sizes (different models?)".into(),
            ));
        }
        totals.copy_from_slice(&t);
        // One all-reduce of all of them, on their device (NCCL sums on the GPUs).
        let sum = self.coll.all_reduce_sum_tensor(&Tensor::cat(&flat, 0)?)?;
        let w = Tensor::new(world as f32, sum.device())?;
        let avg = sum.broadcast_div(&w)?;
        let mut out = BTreeMap::new();
        let mut off = 0;
        for (name, shape, dtype, len) in layout {
            let g = avg.narrow(0, off, len)?.reshape(shape)?.to_dtype(dtype)?;
            out.insert(name, g);
            off += len;
        }
        Ok(out)
    }

    /// Forward + backward over one optimizer step's micro-batches. Returns the mean loss and the
    /// summed gradients (each micro-batch's loss is divided by the number of micro-batches), and the
    /// tokens; in a data-parallel run all three are over every rank (gradients and loss averaged).
    fn step_gradients(&mut self) -> Result<(f64, BTreeMap<String, Tensor>, u64)> {
        let accum = self.accum;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        // The f32 model shares the Vars; a bf16 run builds casts of them for this step.
        let mut bf16 = match self.cfg.train.dtype.as_str() {
            "bf16" => Some(build_model(
                &self.state.model,
                &self.params,
                self.lora.as_ref(),
                DType::BF16,
            )?),
            _ => None,
        };
        let model = bf16.as_mut().unwrap_or(&mut self.model);
        model.set_training(true);
        for _ in 0..accum {
            let b = self.source.next(&self.device)?;
            tokens += b.tokens;
            self.profile.mark("data")?;
            let loss = model.loss(&b.x, &b.y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            self.profile.mark("forward")?;
            let scaled = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            let mut store = model.backward(&scaled)?;
            for (name, var) in &self.params.vars {
                if let Some(g) = store.remove(var.as_tensor()) {
                    let g = match grads.remove(name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    grads.insert(name.clone(), g);
                }
            }
            drop(store);
            self.profile.mark("backward")?;
        }
        model.set_training(false);
        let loss = loss_sum / accum as f64;
        let world = self.coll.world();
        if !self.coll.communicates() {
            return Ok((loss, grads, tokens));
        }
        // Rank r's micro-batch k is batch k * world + r of the single-process stream: the average
        // over the ranks is the gradient of the combined batch.
        let mut totals = [loss, tokens as f64];
        let grads = self.average_gradients(grads, &mut totals)?;
        self.profile.mark("all-reduce")?;
        Ok((totals[0] / world as f64, grads, totals[1] as u64))
    }

    /// Validation loss and (for text) bits per byte over the fixed validation set.
    fn validate(&self) -> Result<Option<(f64, Option<f64>)>> {
        let windows = (self.cfg.eval.tokens / self.cfg.train.context).max(1);
        self.source.validate(
            &self.model,
            windows,
            self.cfg.train.batch_size,
            &self.token_bytes,
        )
    }

    fn sample(&self) -> Result<Option<String>> {
        let Some(tok) = &self.tokenizer else {
            return Ok(None);
        };
        if let Source::Chat { format, sample, .. } = &self.source {
            return self.sample_reply(tok, format, sample).map(Some);
        }
        let mut prompt = if self.cfg.eval.sample_prompt.is_empty() {
            vec![]
        } else {
            tok.encode(&self.cfg.eval.sample_prompt)?
        };
        if prompt.is_empty() {
            prompt.push(tok.eot_id().unwrap_or(0));
        }
        let params = crate::infer::SamplingParams {
            temperature: self.cfg.eval.sample_temperature,
            seed: self.state.seed.wrapping_add(self.state.step as u64),
            ..Default::default()
        };
        let out = crate::infer::generate(
            &self.model,
            &prompt,
            self.cfg.eval.sample_tokens,
            &params,
            tok.eot_id(),
        )?;
        Ok(Some(format!(
            "{}{}",
            self.cfg.eval.sample_prompt,
            tok.decode(&out)?
        )))
    }

    /// A fine-tuned model's reply to the sample conversation (greedy unless a temperature is set).
    fn sample_reply(
        &self,
        tok: &crate::tokenizer::Tokenizer,
        format: &crate::chat::ChatFormat,
        messages: &[crate::chat_template::Message],
    ) -> Result<String> {
        let prompt = format.prompt_ids(tok, messages)?;
        let opts = crate::infer::GenerateOptions {
            max_new_tokens: self.cfg.eval.sample_tokens,
            sampling: crate::infer::SamplingParams {
                temperature: self.cfg.eval.sample_temperature,
                seed: self.state.seed.wrapping_add(self.state.step as u64),
                ..Default::default()
            },
            stop_ids: format.stop_ids.clone(),
            stop_strings: vec![],
        };
        let g = crate::infer::generate_text(&self.model, tok, &prompt, &opts, |_| Ok(()))?;
        let user = messages.last().map(|m| m.content.as_str()).unwrap_or("");
        Ok(format!("user: {user}\nassistant: {}", g.text))
    }

    /// Whether a signal asked the run to stop, agreed by all ranks (each may have seen it at a
    /// different step; they stop together after the first step any of them saw it at).
    fn stop_requested(&self) -> bool {
        let mut asked = [f64::from(u8::from(super::interrupt::requested()))];
        if self.coll.communicates() {
            self.coll.all_reduce_sum_f64(&mut asked);
        }
        asked[0] > 0.0
    }

    /// Rank 0 writes the checkpoint; the others wait for it.
    fn checkpoint(&self) -> Result<PathBuf> {
        if !self.coll.is_lead() {
            self.coll.barrier();
            return Ok(super::checkpoint::checkpoints_dir(&self.run_dir)
                .join(format!("step_{:06}", self.state.step)));
        }
        let weights = match &self.lora {
            None => CheckpointWeights::Model(self.params.tensors()),
            Some(l) => CheckpointWeights::Adapter {
                config_json: self.adapter_config_json(l)?,
                weights: self.params.tensors(),
            },
        };
        let dir = save_checkpoint(
            &self.run_dir,
            &self.state,
            &weights,
            self.tokenizer.as_ref(),
            &self.opt,
        )?;
        self.coll.barrier();
        Ok(dir)
    }

    /// Appends a metrics record (rank 0).
    fn log(&self, record: serde_json::Value) -> Result<()> {
        match &self.metrics {
            Some(m) => m.append(record),
            None => Ok(()),
        }
    }

    fn adapter_config_json(&self, l: &LoraRun) -> Result<String> {
        let targets = crate::model::lora::resolve_targets(&self.state.model, &l.cfg.targets)?;
        Ok(crate::formats::peft::peft_config_json(
            &self.state.model,
            &l.cfg,
            &targets,
            &l.base_path,
        ))
    }

    pub(super) fn train(mut self) -> Result<RunSummary> {
        let world = self.coll.world();
        let lead = self.coll.is_lead();
        let total = self.cfg.total_steps(world);
        let schedule = LrSchedule::from_config(&self.cfg.train, total);
        let planned_step_tokens = self.cfg.step_tokens(world) as u64;
        let flops_per_token = self.state.model.flops_per_token(self.cfg.train.context);
        // Throughput counts every rank's tokens, so the peak is every rank's.
        let peak = device_peak_flops(&self.cfg, &self.device) * world as f64;
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
        let per_step = if self.cfg.is_sft() {
            format!(
                "{} conversations/step, padded to the longest (at most {} tokens)",
                self.cfg.train.batch_size * self.accum * world,
                self.cfg.train.context
            )
        } else {
            format!(
                "{} tokens/step ({} x {} x {} accum{ranks})",
                human(planned_step_tokens as f64),
                self.cfg.train.batch_size,
                self.cfg.train.context,
                self.accum
            )
        };
        if lead {
            eprintln!(
                "model: {} layers, {} heads, width {}, vocab {}, context {} | {trainable} | {per_step} | {total} steps",
                m.n_layer, m.n_head, m.n_embd, m.vocab_size, self.cfg.train.context,
            );
        }
        // Only rank 0 shows progress.
        let bar = if lead {
            crate::progress::steps_bar(total as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(self.state.step as u64);
        let mut tally = Tally {
            started: Instant::now(),
            elapsed_before: self.state.elapsed_seconds,
            train_secs: 0.0,
            train_tokens: 0,
            steps: 0,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            val: None,
            samples: Vec::new(),
            flops_per_token,
            peak,
            params: n_params,
        };
        let blow_up = super::guard::blow_up_loss(self.state.model.vocab_size);
        let mut prune_due = false;
        let say = |bar: &indicatif::ProgressBar, s: String| {
            if !lead {
                return;
            }
            if bar.is_hidden() {
                eprintln!("{s}");
            } else {
                bar.println(s);
            }
        };
        while self.state.step < total {
            self.profile.start()?;
            let t0 = Instant::now();
            let lr = schedule.lr(self.state.step);
            let (loss, grads, step_tokens) = self.step_gradients()?;
            if !loss.is_finite() || loss > blow_up {
                bar.abandon();
                let step = self.state.step + 1;
                let e = super::guard::diverged(&self.run_dir, step, loss, blow_up, lead);
                // No rank ends (and so none aborts the job) before rank 0 has moved the
                // diverged checkpoints aside.
                self.coll.barrier();
                return Err(e);
            }
            // This loss came from the newest checkpoint's weights: it is sound, the older ones
            // can go.
            if prune_due && lead {
                super::checkpoint::prune(&self.run_dir, self.cfg.checkpoint.keep)?;
            }
            prune_due = false;
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
            self.state.tokens_seen += step_tokens;
            let dt = t0.elapsed().as_secs_f64();
            tally.train_secs += dt;
            tally.train_tokens += step_tokens;
            tally.steps += 1;
            if tally.first_loss.is_nan() {
                tally.first_loss = loss;
            }
            tally.last_loss = loss;
            let tps = step_tokens as f64 / dt;
            let mfu = tps * flops_per_token / peak;
            let step = self.state.step;
            self.log(json!({
                "kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                "tokens_per_sec": tps, "mfu": mfu, "tokens": self.state.tokens_seen,
                "elapsed": tally.elapsed(),
            }))?;
            let avg_tps = tally.train_tokens as f64 / tally.train_secs;
            let eta = (total - step) as f64 * tally.train_secs / tally.steps as f64;
            let msg = format!(
                "loss {loss:.4} | lr {lr:.2e} | {} tok/s | MFU {:.1}% | norm {norm:.2}",
                human(avg_tps),
                100.0 * avg_tps * flops_per_token / peak
            );
            bar.set_position(step as u64);
            bar.set_message(msg.clone());
            if lead
                && bar.is_hidden()
                && (step.is_multiple_of(self.cfg.train.log_every.max(1))
                    || step == 1
                    || step == total)
            {
                eprintln!("step {step}/{total} | {msg} | ETA {}", duration(eta));
            }
            let last = step == total;
            // Validation, samples and the plot are rank 0's (the other ranks wait at the next
            // all-reduce).
            if lead && (due(step, self.cfg.eval.every) || last) {
                if let Some((vl, bpb)) = self.validate()? {
                    self.state.last_val_loss = Some(vl);
                    tally.val = Some((vl, bpb));
                    self.log(json!({"kind": "val", "step": step, "val_loss": vl, "val_bpb": bpb}))?;
                    let bpb = bpb
                        .map(|b| format!(" | {b:.4} bits/byte"))
                        .unwrap_or_default();
                    say(&bar, format!("step {step}: val loss {vl:.4}{bpb}"));
                    if let Err(e) = self.plot() {
                        say(&bar, format!("warning: the loss plot was not written: {e}"));
                    }
                }
            }
            if lead && (due(step, self.cfg.eval.sample_every) || last) {
                if let Some(s) = self.sample()? {
                    self.log(json!({"kind": "sample", "step": step, "text": s}))?;
                    say(
                        &bar,
                        format!("step {step} sample: {}", s.replace('\n', "\n    ")),
                    );
                    tally.samples.push(s);
                }
            }
            let pause = self.cfg.train.stop_at_step == step && !last;
            let interrupted = !last && self.stop_requested();
            if due(step, self.cfg.checkpoint.every) || last || pause || interrupted {
                self.state.elapsed_seconds = tally.elapsed();
                let dir = self.checkpoint()?;
                prune_due = true;
                if last && lead {
                    super::checkpoint::prune(&self.run_dir, self.cfg.checkpoint.keep)?;
                }
                if interrupted {
                    bar.finish_and_clear();
                    let cmd = if self.cfg.is_sft() { "sft" } else { "pretrain" };
                    return Err(Error::Interrupted(format!(
                        "stopped by {} after step {step}/{total}; checkpoint {} written. Continue with: chatforge {cmd} --resume {}",
                        super::interrupt::signal_name(),
                        dir.display(),
                        self.run_dir.display()
                    )));
                }
            }
            if pause {
                bar.finish_and_clear();
                if lead {
                    eprintln!("stopped at step {step} as asked (train.stop_at_step); continue with --resume {}", self.run_dir.display());
                }
                break;
            }
        }
        bar.finish_and_clear();
        if let (true, Some(report)) = (lead, self.profile.report()) {
            eprint!("{report}");
        }
        if self.state.step < total {
            let dir = self.run_dir.join("checkpoints");
            return Ok(self.summary(tally, dir));
        }
        let (model_dir, adapter_dir) = if lead {
            let dirs = self.save_final()?;
            if let Err(e) = self.plot() {
                eprintln!("warning: the loss plot was not written: {e}");
            }
            dirs
        } else {
            self.final_dirs()
        };
        // No rank ends before the final model is whole.
        self.coll.barrier();
        let mut summary = self.summary(tally, model_dir);
        summary.adapter_dir = adapter_dir;
        Ok(summary)
    }

    /// Where [`Run::save_final`] writes.
    fn final_dirs(&self) -> (PathBuf, Option<PathBuf>) {
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
    fn save_final(&self) -> Result<(PathBuf, Option<PathBuf>)> {
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

    fn summary(&self, t: Tally, model_dir: PathBuf) -> RunSummary {
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

    fn plot(&self) -> Result<()> {
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
