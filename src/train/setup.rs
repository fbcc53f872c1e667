//! Setting a run up: a fresh model (preset or `init_from`) or a checkpoint to resume, the data, the
//! optimizer, and the run directory.

use super::checkpoint::{load_checkpoint, resolve_checkpoint, TrainerState};
use super::metrics::MetricsLog;
use super::optim::{AdamW, AdamWConfig};
use super::trainer::Run;
use crate::config::RunConfig;
use crate::data::{load_meta, BatchLoader, DataMeta, ShardSet};
use crate::error::{Error, Result};
use crate::model::params::{init_weights, Params};
use crate::model::{LoadedModel, ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use std::path::{Path, PathBuf};

pub(super) fn device_peak_flops(cfg: &RunConfig, device: &Device) -> f64 {
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

pub(super) fn open_data(
    cfg: &RunConfig,
    model_cfg: &ModelConfig,
) -> Result<(DataMeta, ShardSet, Option<ShardSet>, Option<Tokenizer>)> {
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
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::load(dir)?)
    } else {
        None
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() != meta.vocab_size {
            return Err(Error::bad_file(
                dir,
                "tokenizer.json and meta.json disagree on the vocabulary size",
            ));
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
            mc.intermediate = if mc.mlp == crate::model::MlpKind::Gelu {
                4 * m.n_embd
            } else {
                (8 * m.n_embd / 3).div_ceil(64) * 64
            };
        }
        if m.n_head > 0 {
            mc.n_head = m.n_head;
            mc.n_kv_head = if mc.family == crate::model::Family::Gpt2 {
                m.n_head
            } else {
                mc.n_kv_head.min(m.n_head)
            };
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
    pub(super) fn new_fresh(cfg: RunConfig, run_dir: &Path) -> Result<Run> {
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

    pub(super) fn new_resumed(path: &Path, overrides: &[String]) -> Result<Run> {
        let ckpt = resolve_checkpoint(path)?;
        let run_dir = ckpt
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::bad_file(&ckpt, "a checkpoint lives in RUN/checkpoints/step_N"))?
            .to_path_buf();
        super::checkpoint::remove_partial_checkpoints(&run_dir)?;
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

    fn assemble(
        cfg: RunConfig,
        run_dir: &Path,
        device: Device,
        params: Params,
        opt: AdamW,
        state: TrainerState,
        resumed: Option<()>,
    ) -> Result<Run> {
        let (_, train, val, tokenizer) = open_data(&cfg, &state.model)?;
        let model = Transformer::new(&state.model, &params.tensors())?;
        let mut loader = BatchLoader::new(train, cfg.train.batch_size, state.seed, 0, 1)?;
        loader.position = state.loader_position;
        let token_bytes = tokenizer
            .as_ref()
            .map(|t| t.token_bytes())
            .unwrap_or_default();
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
    serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(&p, format!("malformed trainer state: {e}")))
}

fn adam_config(cfg: &RunConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: cfg.train.beta1,
        beta2: cfg.train.beta2,
        eps: cfg.train.eps,
        weight_decay: cfg.train.weight_decay,
    }
}
