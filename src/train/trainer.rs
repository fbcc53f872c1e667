//! The training loop shared by pre-training (and, later, fine-tuning): gradient accumulation,
//! clipping, AdamW, the LR schedule, periodic validation / samples / checkpoints, progress, metrics.

use super::checkpoint::{load_checkpoint, resolve_checkpoint, save_checkpoint, TrainerState};
use super::metrics::MetricsLog;
use super::optim::{grad_norm, AdamW, AdamWConfig};
use super::schedule::LrSchedule;
use crate::config::RunConfig;
use crate::data::{load_meta, BatchLoader, DataMeta, ShardSet};
use crate::error::{Error, Result};
use crate::eval::score_windows;
use crate::model::params::{init_weights, Params};
use crate::model::{cross_entropy, LoadedModel, ModelConfig, Transformer};
use crate::progress::{duration, human};
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
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

struct Run {
    cfg: RunConfig,
    run_dir: PathBuf,
    device: Device,
    params: Params,
    model: Transformer,
    opt: AdamW,
    loader: BatchLoader,
    val: Option<ShardSet>,
    tokenizer: Option<Tokenizer>,
    token_bytes: Vec<u32>,
    state: TrainerState,
    metrics: MetricsLog,
}

fn device_peak_flops(cfg: &RunConfig, device: &Device) -> f64 {
    if cfg.train.peak_flops > 0.0 {
        return cfg.train.peak_flops;
    }
    match device {
        // Zen 4 / Ice Lake class core: 2 x 512-bit FMA per cycle at ~3 GHz = ~96 GFLOP/s fp32.
        Device::Cpu => rayon::current_num_threads() as f64 * 96e9,
        // H100/H200 dense bf16.
        _ => 989e12,
    }
}

fn open_data(cfg: &RunConfig, model_cfg: &ModelConfig) -> Result<(DataMeta, ShardSet, Option<ShardSet>, Option<Tokenizer>)> {
    let dir = &cfg.data.dir;
    let meta = load_meta(dir)?;
    if meta.vocab_size > model_cfg.vocab_size {
        return Err(Error::Mismatch(format!(
            "{}: the data was tokenized with a vocabulary of {} tokens but the model's vocab_size is {}; \
             prepare the data with the model's tokenizer",
            dir.display(),
            meta.vocab_size,
            model_cfg.vocab_size
        )));
    }
    let train = ShardSet::open(dir, &meta.train_shards, cfg.train.context)?;
    let val = if meta.val_shards.is_empty() {
        None
    } else {
        Some(ShardSet::open(dir, &meta.val_shards, cfg.train.context)?)
    };
    let tokenizer = if dir.join("tokenizer.json").exists() { Some(Tokenizer::load(dir)?) } else { None };
    if let Some(t) = &tokenizer {
        if t.vocab_size() != meta.vocab_size {
            return Err(Error::bad_file(dir, "tokenizer.json and meta.json disagree on the vocabulary size"));
        }
    }
    Ok((meta, train, val, tokenizer))
}

/// The model config of a fresh run: a preset (with the data's vocabulary, padded to a multiple of 64
/// for faster matmuls, and the run's context) plus any shape overrides.
pub fn model_config_for(cfg: &RunConfig, data_vocab: usize) -> Result<ModelConfig> {
    let m = &cfg.model;
    let vocab = data_vocab.div_ceil(64) * 64;
    let mut mc = ModelConfig::preset(&m.preset, Some(vocab), Some(cfg.train.context))?;
    if m.n_layer > 0 {
        mc.n_layer = m.n_layer;
    }
    if m.n_embd > 0 || m.n_head > 0 {
        if m.n_embd > 0 {
            mc.n_embd = m.n_embd;
            mc.intermediate = if mc.mlp == crate::model::MlpKind::Gelu { 4 * m.n_embd } else { (8 * m.n_embd / 3).div_ceil(64) * 64 };
        }
        if m.n_head > 0 {
            mc.n_head = m.n_head;
            mc.n_kv_head = if mc.family == crate::model::Family::Gpt2 { m.n_head } else { mc.n_kv_head.min(m.n_head) };
        }
        mc.head_dim = mc.n_embd / mc.n_head;
    }
    if m.n_kv_head > 0 {
        mc.n_kv_head = m.n_kv_head;
    }
    if m.intermediate > 0 {
        mc.intermediate = m.intermediate;
    }
    mc.validate()?;
    Ok(mc)
}

impl Run {
    fn new_fresh(cfg: RunConfig, run_dir: &Path) -> Result<Run> {
        if run_dir.join("config.toml").exists() || run_dir.join("checkpoints").exists() {
            return Err(Error::bad_file(
                run_dir,
                "a run already exists here; continue it with --resume or choose a new --out (nothing was overwritten)",
            ));
        }
        let device = crate::device(&cfg.train.device)?;
        let meta = load_meta(&cfg.data.dir)?;
        let (model_cfg, weights) = if cfg.model.init_from.is_empty() {
            let mc = model_config_for(&cfg, meta.vocab_size)?;
            let w = init_weights(&mc, cfg.train.seed, &device)?;
            (mc, w)
        } else {
            let p = PathBuf::from(&cfg.model.init_from);
            let lm = LoadedModel::load(&p, &device)?;
            if cfg.train.context > lm.cfg.context {
                return Err(Error::Config(format!(
                    "train.context {} is longer than the context of {} ({})",
                    cfg.train.context,
                    p.display(),
                    lm.cfg.context
                )));
            }
            (lm.cfg, lm.weights)
        };
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        crate::fsutil::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        let state = TrainerState::new(cfg.clone(), model_cfg);
        let opt_cfg = adam_config(&cfg);
        let params = Params::from_tensors(&weights)?;
        let opt = AdamW::new(opt_cfg, &params.vars)?;
        Run::assemble(cfg, run_dir, device, params, opt, state, None)
    }

    fn new_resumed(path: &Path, overrides: &[String]) -> Result<Run> {
        let ckpt = resolve_checkpoint(path)?;
        let run_dir = ckpt
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::bad_file(&ckpt, "a checkpoint lives in RUN/checkpoints/step_N"))?
            .to_path_buf();
        let probe = load_checkpoint_state(&ckpt)?;
        let mut cfg = probe.config.clone();
        if !overrides.is_empty() {
            // Re-apply overrides on top of the saved config (e.g. more steps).
            let tmp = crate::fsutil::temp_sibling(&run_dir.join("resume.toml"));
            crate::fsutil::write_atomic(&tmp, cfg.to_toml().as_bytes())?;
            let r = RunConfig::load(Some(&tmp), overrides);
            let _ = std::fs::remove_file(&tmp);
            cfg = r?;
        }
        let device = crate::device(&cfg.train.device)?;
        let loaded = load_checkpoint(&ckpt, &device)?;
        let mut state = loaded.state;
        state.config = cfg.clone();
        let params = Params::from_tensors(&loaded.weights)?;
        let mut opt = AdamW::new(adam_config(&cfg), &params.vars)?;
        opt.m = loaded.m;
        opt.v = loaded.v;
        opt.t = state.optimizer_t;
        eprintln!("resuming {} from step {}", run_dir.display(), state.step);
        Run::assemble(cfg, &run_dir, device, params, opt, state, Some(()))
    }

    fn assemble(cfg: RunConfig, run_dir: &Path, device: Device, params: Params, opt: AdamW, state: TrainerState, resumed: Option<()>)
        -> Result<Run> {
        let (_, train, val, tokenizer) = open_data(&cfg, &state.model)?;
        let model = Transformer::new(&state.model, &params.tensors())?;
        let mut loader = BatchLoader::new(train, cfg.train.batch_size, state.seed, 0, 1)?;
        loader.position = state.loader_position;
        let token_bytes = tokenizer.as_ref().map(|t| t.token_bytes()).unwrap_or_default();
        let metrics = MetricsLog::open(run_dir, resumed.map(|_| state.step))?;
        Ok(Run {
            cfg,
            run_dir: run_dir.to_path_buf(),
            device,
            params,
            model,
            opt,
            loader,
            val,
            tokenizer,
            token_bytes,
            state,
            metrics,
        })
    }
}

fn load_checkpoint_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(super::checkpoint::STATE_FILE);
    let text = crate::fsutil::read_to_string(&p)?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&p, format!("malformed trainer state: {e}")))
}

fn adam_config(cfg: &RunConfig) -> AdamWConfig {
    AdamWConfig { beta1: cfg.train.beta1, beta2: cfg.train.beta2, eps: cfg.train.eps, weight_decay: cfg.train.weight_decay }
}

/// Starts a new run in `run_dir`.
pub fn pretrain(cfg: RunConfig, run_dir: &Path) -> Result<RunSummary> {
    Run::new_fresh(cfg, run_dir)?.train()
}

/// Continues the run of a checkpoint (or the newest checkpoint of a run directory).
pub fn resume(path: &Path, overrides: &[String]) -> Result<RunSummary> {
    Run::new_resumed(path, overrides)?.train()
}

impl Run {
    /// Forward + backward over one optimizer step's micro-batches. Returns the mean loss and the
    /// summed gradients (each micro-batch's loss is divided by the number of micro-batches).
    fn step_gradients(&mut self) -> Result<(f64, BTreeMap<String, Tensor>)> {
        let accum = self.cfg.accumulation();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        for _ in 0..accum {
            let b = self.loader.next_batch();
            let x = Tensor::from_vec(b.inputs, (b.batch, b.context), &self.device)?;
            let y = Tensor::from_vec(b.targets, (b.batch, b.context), &self.device)?;
            let logits = self.model.forward(&x, 0, None)?;
            let loss = cross_entropy(&logits, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let scaled = if accum > 1 { (loss / accum as f64)? } else { loss };
            let mut store = scaled.backward()?;
            for (name, var) in &self.params.vars {
                if let Some(g) = store.remove(var.as_tensor()) {
                    let g = match grads.remove(name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    grads.insert(name.clone(), g);
                }
            }
        }
        Ok((loss_sum / accum as f64, grads))
    }

    /// Validation loss and bits per byte over the fixed validation windows.
    fn validate(&self) -> Result<Option<(f64, f64)>> {
        let Some(val) = &self.val else { return Ok(None) };
        let n = (self.cfg.eval.tokens / self.cfg.train.context).max(1);
        let windows = val.sequential_windows(n);
        if windows.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
        let (nats, count, bytes) = score_windows(&self.model, &refs, &self.token_bytes, self.cfg.train.batch_size)?;
        let bpb = if bytes > 0 { nats / std::f64::consts::LN_2 / bytes as f64 } else { f64::NAN };
        Ok(Some((nats / count as f64, bpb)))
    }

    fn sample(&self) -> Result<Option<String>> {
        let Some(tok) = &self.tokenizer else { return Ok(None) };
        let mut prompt = if self.cfg.eval.sample_prompt.is_empty() { vec![] } else { tok.encode(&self.cfg.eval.sample_prompt)? };
        if prompt.is_empty() {
            prompt.push(tok.eot_id().unwrap_or(0));
        }
        let params = crate::infer::SamplingParams {
            temperature: self.cfg.eval.sample_temperature,
            top_k: 0,
            top_p: 1.0,
            seed: self.state.seed.wrapping_add(self.state.step as u64),
        };
        let out = crate::infer::generate(&self.model, &prompt, self.cfg.eval.sample_tokens, &params, tok.eot_id())?;
        Ok(Some(format!("{}{}", self.cfg.eval.sample_prompt, tok.decode(&out)?)))
    }

    fn checkpoint(&self) -> Result<PathBuf> {
        save_checkpoint(&self.run_dir, &self.state, &self.params.tensors(), self.tokenizer.as_ref(), &self.opt, self.cfg.checkpoint.keep)
    }

    fn train(mut self) -> Result<RunSummary> {
        let total = self.cfg.total_steps();
        let schedule = LrSchedule::from_config(&self.cfg.train, total);
        let step_tokens = self.cfg.step_tokens() as u64;
        let flops_per_token = self.state.model.flops_per_token(self.cfg.train.context);
        let peak = device_peak_flops(&self.cfg, &self.device);
        let n_params = self.params.count();
        eprintln!(
            "model: {} parameters ({} layers, {} heads, width {}, vocab {}, context {}) | {} tokens/step ({} x {} x {} accum) | {} steps",
            human(n_params as f64),
            self.state.model.n_layer,
            self.state.model.n_head,
            self.state.model.n_embd,
            self.state.model.vocab_size,
            self.cfg.train.context,
            human(step_tokens as f64),
            self.cfg.train.batch_size,
            self.cfg.train.context,
            self.cfg.accumulation(),
            total
        );
        let bar = crate::progress::steps_bar(total as u64);
        bar.set_position(self.state.step as u64);
        let started = Instant::now();
        let elapsed_before = self.state.elapsed_seconds;
        let (mut train_secs, mut train_tokens) = (0f64, 0u64);
        let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
        let mut samples = Vec::new();
        let mut val_result = None;
        let mut last_ckpt: Option<PathBuf> = None;
        let say = |bar: &indicatif::ProgressBar, s: String| {
            if bar.is_hidden() {
                eprintln!("{s}");
            } else {
                bar.println(s);
            }
        };
        while self.state.step < total {
            let t0 = Instant::now();
            let lr = schedule.lr(self.state.step);
            let (loss, grads) = self.step_gradients()?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::Training(format!(
                    "the loss is {loss} at step {}; the weights were not updated. {}. Try a lower train.lr or stronger train.grad_clip.",
                    self.state.step + 1,
                    match &last_ckpt {
                        Some(p) => format!("The last good checkpoint is {}", p.display()),
                        None => "No checkpoint was written yet".into(),
                    }
                )));
            }
            let norm = grad_norm(&grads)?;
            let clip = self.cfg.train.grad_clip;
            let scale = if clip > 0.0 && norm > clip { clip / (norm + 1e-6) } else { 1.0 };
            self.opt.step(&self.params.vars, &grads, lr, scale)?;
            drop(grads);
            self.state.step += 1;
            self.state.optimizer_t = self.opt.t;
            self.state.loader_position = self.loader.position;
            self.state.tokens_seen += step_tokens;
            let dt = t0.elapsed().as_secs_f64();
            train_secs += dt;
            train_tokens += step_tokens;
            if first_loss.is_nan() {
                first_loss = loss;
            }
            last_loss = loss;
            let tps = step_tokens as f64 / dt;
            let mfu = tps * flops_per_token / peak;
            let step = self.state.step;
            self.metrics.append(json!({
                "kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                "tokens_per_sec": tps, "mfu": mfu, "tokens": self.state.tokens_seen,
                "elapsed": elapsed_before + started.elapsed().as_secs_f64(),
            }))?;
            let avg_tps = train_tokens as f64 / train_secs;
            let eta = (total - step) as f64 * step_tokens as f64 / avg_tps;
            let msg = format!(
                "loss {loss:.4} | lr {lr:.2e} | {} tok/s | MFU {:.1}% | norm {norm:.2}",
                human(avg_tps),
                100.0 * avg_tps * flops_per_token / peak
            );
            bar.set_position(step as u64);
            bar.set_message(msg.clone());
            if bar.is_hidden() && (step % self.cfg.train.log_every.max(1) == 0 || step == 1 || step == total) {
                eprintln!("step {step}/{total} | {msg} | ETA {}", duration(eta));
            }
            let last = step == total;
            if (self.cfg.eval.every > 0 && step % self.cfg.eval.every == 0) || last {
                if let Some((vl, bpb)) = self.validate()? {
                    self.state.last_val_loss = Some(vl);
                    val_result = Some((vl, bpb));
                    self.metrics.append(json!({"kind": "val", "step": step, "val_loss": vl, "val_bpb": bpb}))?;
                    say(&bar, format!("step {step}: val loss {vl:.4} | {bpb:.4} bits/byte"));
                    self.plot()?;
                }
            }
            if (self.cfg.eval.sample_every > 0 && step % self.cfg.eval.sample_every == 0) || last {
                if let Some(s) = self.sample()? {
                    self.metrics.append(json!({"kind": "sample", "step": step, "text": s}))?;
                    say(&bar, format!("step {step} sample: {}", s.replace('\n', "\n    ")));
                    samples.push(s);
                }
            }
            if (self.cfg.checkpoint.every > 0 && step % self.cfg.checkpoint.every == 0) || last {
                self.state.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();
                last_ckpt = Some(self.checkpoint()?);
            }
        }
        bar.finish_and_clear();
        let model_dir = self.run_dir.join("model");
        crate::model::save_model_dir(&model_dir, &self.state.model, &self.params.tensors(), self.tokenizer.as_ref())?;
        self.plot()?;
        let tokens_per_sec = if train_secs > 0.0 { train_tokens as f64 / train_secs } else { 0.0 };
        let summary = RunSummary {
            run_dir: self.run_dir.clone(),
            model_dir,
            steps: self.state.step,
            tokens_seen: self.state.tokens_seen,
            params: n_params,
            seconds: elapsed_before + started.elapsed().as_secs_f64(),
            tokens_per_sec,
            mfu: tokens_per_sec * flops_per_token / peak,
            first_loss,
            final_loss: last_loss,
            val_loss: val_result.map(|v| v.0),
            val_bpb: val_result.map(|v| v.1),
            samples,
        };
        Ok(summary)
    }

    fn plot(&self) -> Result<()> {
        let recs = super::metrics::read_records(self.metrics.path())?;
        let pick = |kind: &str, key: &str| -> Vec<(f64, f64)> {
            recs.iter()
                .filter(|r| r["kind"] == kind)
                .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
                .collect()
        };
        super::plot::plot_loss(&self.run_dir.join("loss.png"), &pick("train", "loss"), &pick("val", "val_loss"))
    }
}
