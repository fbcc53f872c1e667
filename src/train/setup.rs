//! Setting a run up: a fresh model (preset or `init_from`) or a checkpoint to resume, the data, the
//! optimizer, and the run directory.

use super::checkpoint::{load_checkpoint, resolve_checkpoint, TrainerState};
use super::metrics::MetricsLog;
use super::optim::{AdamW, AdamWConfig};
use super::source::Source;
use super::trainer::{broadcast_params, build_model, LoraRun, Run};
use crate::config::RunConfig;
use crate::data::{load_meta, BatchLoader, DataMeta, ShardSet};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::formats::LoadedModel;
use crate::model::lora::{self, LoraConfig};
use crate::model::params::{init_weights, Params};
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use std::path::{Path, PathBuf};

pub(super) fn device_peak_flops(cfg: &RunConfig, device: &Device) -> f64 {
    if cfg.train.peak_flops > 0.0 {
        return cfg.train.peak_flops;
    }
    match device {
        Device::Cpu => candle_core::utils::get_num_threads() as f64 * cpu_core_peak_flops(),
        // H100/H200 dense bf16.
        _ => 989e12,
    }
}

/// fp32 FLOP/s of one core: FLOP per cycle from the vector units the CPU reports, times the clock
/// /proc/cpuinfo gives (3 GHz where it gives none). Two 512-bit FMA pipes (16 lanes x 2 FLOP x 2)
/// are 64 FLOP/cycle: Intel with avx512f, AMD from Zen 5 (family 0x1a). AVX2 + FMA, Zen 4 (which
/// splits 512-bit work over two 256-bit pipes) and Arm cores are taken as 32; x86 without FMA 8. `train.peak_flops`
/// overrides it (CPUs with a single 512-bit pipe have half this).
fn cpu_core_peak_flops() -> f64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let ghz = field("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(3.0, |mhz| mhz / 1000.0);
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let family = field("cpu family").and_then(|v| v.parse::<u32>().ok());
    let per_cycle = match field("vendor_id").as_deref() {
        // Arm cores: two to four 128-bit FMA pipes.
        _ if cfg!(not(target_arch = "x86_64")) => 32.0,
        _ if !has("fma") => 8.0,
        Some("GenuineIntel") if has("avx512f") => 64.0,
        Some("AuthenticAMD") if has("avx512f") && family >= Some(0x1a) => 64.0,
        _ => 32.0,
    };
    per_cycle * ghz * 1e9
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
    let train = ShardSet::open(dir, &meta.train_shards, cfg.train.context)?
        .with_vocab(model_cfg.vocab_size);
    let val = if meta.val_shards.is_empty() {
        None
    } else {
        let val = ShardSet::open(dir, &meta.val_shards, cfg.train.context)?
            .with_vocab(model_cfg.vocab_size);
        val.check_all_ids()?;
        Some(val)
    };
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::load(dir)?)
    } else {
        None
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() != meta.vocab_size && !dir.join("meta.json").exists() {
            return Err(Error::bad_file(
                dir,
                format!(
                    "meta.json is missing, so the shards were read as llm.c's ({} tokens of vocabulary), but tokenizer.json here has {}; restore meta.json or prepare the data again",
                    meta.vocab_size,
                    t.vocab_size()
                ),
            ));
        }
        if t.vocab_size() != meta.vocab_size {
            return Err(Error::bad_file(
                dir,
                format!(
                    "tokenizer.json ({} tokens) and meta.json ({}) disagree on the vocabulary size",
                    t.vocab_size(),
                    meta.vocab_size
                ),
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

/// What a run trains: its model config, the starting weights of the trainable parameters, the
/// LoRA parts, and the tokenizer (fine-tuning takes the base model's).
struct Start {
    model: ModelConfig,
    params: Params,
    lora: Option<LoraRun>,
    tokenizer: Option<Tokenizer>,
}

/// The base model of a fine-tuning run.
fn load_base(cfg: &RunConfig, device: &Device) -> Result<(PathBuf, LoadedModel)> {
    if cfg.model.init_from.is_empty() {
        return Err(Error::Config(
            "fine-tuning needs a base model: --model PATH (model.init_from)".into(),
        ));
    }
    let p = PathBuf::from(&cfg.model.init_from);
    let lm = LoadedModel::load(&p, device)?;
    lm.tokenizer(&p)?;
    Ok((p, lm))
}

fn lora_config(cfg: &RunConfig) -> LoraConfig {
    LoraConfig {
        rank: cfg.lora.rank,
        alpha: cfg.lora.alpha,
        targets: cfg.lora.targets.clone(),
        dropout: cfg.lora.dropout,
    }
}

/// Fine-tuning's parameters: the whole base model, or fresh adapters over a frozen base.
fn sft_start(cfg: &RunConfig, lm: LoadedModel, base: &Path, device: &Device) -> Result<Start> {
    let tokenizer = lm.tokenizer.clone();
    if cfg.lora.rank == 0 {
        return Ok(Start {
            params: Params::from_tensors(&lm.weights)?,
            model: lm.cfg,
            lora: None,
            tokenizer,
        });
    }
    let lcfg = lora_config(cfg);
    let slots = lora::slots(&lm.cfg, &lcfg.targets)?;
    let adapter = lora::init(&slots, lcfg.rank, cfg.train.seed, device)?;
    Ok(Start {
        params: Params::from_tensors(&adapter)?,
        lora: Some(LoraRun::new(
            lcfg,
            lm.weights,
            absolute(base),
            &cfg.train.dtype,
        )?),
        model: lm.cfg,
        tokenizer,
    })
}

/// A local path as an absolute path (what adapter_config.json records as the base model).
fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Written into every run directory when the run is created.
const RUN_MARKER: &str = ".chatforge-run";

impl<'c> Run<'c> {
    pub(super) fn new_fresh(
        cfg: RunConfig,
        run_dir: &Path,
        coll: &'c dyn Collective,
    ) -> Result<Run<'c>> {
        Self::start(cfg, run_dir, coll, false)
    }

    /// A new run, or (`restart`) the run of a directory that has its config but no checkpoint
    /// yet (killed before its first one), started again from step 0.
    fn start(
        mut cfg: RunConfig,
        run_dir: &Path,
        coll: &'c dyn Collective,
        restart: bool,
    ) -> Result<Run<'c>> {
        let (rank, world) = (coll.rank(), coll.world());
        let accum = cfg.accumulation(world)?;
        if restart {
            if coll.is_lead() {
                super::checkpoint::remove_partial_checkpoints(run_dir)?;
            }
        } else if run_dir.join("config.toml").exists() || run_dir.join("checkpoints").exists() {
            return Err(Error::bad_file(
                run_dir,
                "a run already exists here; continue it with --resume or choose a new --out (nothing was overwritten)",
            ));
        } else {
            // The run writes model/, adapter/, checkpoints/ and more into the directory, and
            // model/ would replace a folder of that name the user had.
            crate::fsutil::ensure_new_or_empty(run_dir, "the run directory")?;
        }
        // Every rank has looked before rank 0 creates the run.
        coll.barrier();
        let device = coll.device(&cfg.train.device)?;
        let mut start = if cfg.is_sft() {
            let (p, lm) = load_base(&cfg, &device)?;
            // Fine-tuning rows are at most the model's context long.
            cfg.train.context = cfg.train.context.min(lm.cfg.context);
            sft_start(&cfg, lm, &p, &device)?
        } else if cfg.model.init_from.is_empty() {
            let meta = load_meta(&cfg.data.dir)?;
            let mc = model_config_for(&cfg, meta.vocab_size)?;
            let w = init_weights(&mc, cfg.train.seed, &device)?;
            Start {
                model: mc,
                params: Params::from_tensors(&w)?,
                lora: None,
                tokenizer: None,
            }
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
            Start {
                model: lm.cfg,
                params: Params::from_tensors(&lm.weights)?,
                lora: None,
                tokenizer: None,
            }
        };
        // The same starting weights on every rank, whatever each one computed or loaded.
        broadcast_params(&start.params, coll)?;
        let source = open_source(&cfg, &start.model, &mut start.tokenizer, rank, world)?;
        if cfg.is_sft() && cfg.train.max_steps == 0 {
            // Batches per epoch over all ranks, over this rank's micro-batches per step.
            let per_epoch = source.batches_per_epoch() as f64 / accum as f64;
            cfg.train.max_steps = ((cfg.sft.epochs * per_epoch).ceil() as usize).max(1);
        }
        if coll.is_lead() {
            std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
            crate::fsutil::write_atomic(&run_dir.join(RUN_MARKER), b"a chatforge run directory\n")?;
            crate::fsutil::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        }
        let mut state = TrainerState::new(cfg.clone(), start.model.clone());
        state.world = world;
        let opt = AdamW::new(adam_config(&cfg), &start.params.vars)?;
        // A restart drops the killed run's metrics (`resumed` at step 0 keeps none of them).
        Run::assemble(
            cfg, run_dir, device, start, opt, state, source, restart, coll, accum,
        )
    }

    pub(super) fn new_resumed(
        path: &Path,
        overrides: &[String],
        coll: &'c dyn Collective,
    ) -> Result<Run<'c>> {
        let (rank, world) = (coll.rank(), coll.world());
        let saved_config = path.join("config.toml");
        // Only a directory chatforge made a run in: a folder of the user's that happens to hold a
        // config.toml is never trained into.
        if path.join(RUN_MARKER).exists()
            && saved_config.exists()
            && super::checkpoint::list_checkpoints(path)?.is_empty()
        {
            let cfg = RunConfig::load(Some(&saved_config), overrides)?;
            if coll.is_lead() {
                eprintln!(
                    "{} has no checkpoint yet (the run stopped before its first): starting it again from step 0 with its saved config",
                    path.display()
                );
            }
            return Self::start(cfg, path, coll, true);
        }
        let ckpt = resolve_checkpoint(path)?;
        let run_dir = ckpt
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::bad_file(&ckpt, "a checkpoint lives in RUN/checkpoints/step_N"))?
            .to_path_buf();
        if coll.is_lead() {
            super::checkpoint::remove_partial_checkpoints(&run_dir)?;
        }
        let probe = load_checkpoint_state(&ckpt)?;
        // The data each rank reads and the gradient average depend on the number of ranks.
        crate::dist::check_same_world(probe.world, world)?;
        let mut cfg = probe.config.clone();
        if !overrides.is_empty() {
            // Re-apply overrides on top of the saved config (e.g. more steps).
            let tmp = crate::fsutil::temp_sibling(&run_dir.join("resume.toml"));
            crate::fsutil::write_atomic(&tmp, cfg.to_toml().as_bytes())?;
            let r = RunConfig::load(Some(&tmp), overrides);
            let _ = std::fs::remove_file(&tmp);
            cfg = r?;
        }
        let accum = cfg.accumulation(world)?;
        let device = coll.device(&cfg.train.device)?;
        let loaded = load_checkpoint(&ckpt, &device)?;
        let mut state = loaded.state;
        state.config = cfg.clone();
        let params = Params::from_tensors(&loaded.weights)?;
        let mut start = match (cfg.is_sft(), cfg.lora.rank) {
            (true, 0) => Start {
                model: state.model.clone(),
                params,
                lora: None,
                tokenizer: Some(Tokenizer::load(&ckpt)?),
            },
            (true, _) => {
                let (p, lm) = load_base(&cfg, &device)?;
                Start {
                    model: state.model.clone(),
                    params,
                    lora: Some(LoraRun::new(
                        lora_config(&cfg),
                        lm.weights,
                        absolute(&p),
                        &cfg.train.dtype,
                    )?),
                    tokenizer: lm.tokenizer,
                }
            }
            (false, _) => Start {
                model: state.model.clone(),
                params,
                lora: None,
                tokenizer: None,
            },
        };
        let mut opt = AdamW::new(adam_config(&cfg), &start.params.vars)?;
        opt.m = loaded.m;
        opt.v = loaded.v;
        opt.t = state.optimizer_t;
        let mut source = open_source(&cfg, &state.model, &mut start.tokenizer, rank, world)?;
        // Every rank drew as many batches (of its own streams): one position for all.
        source.set_position(state.loader_position);
        if coll.is_lead() {
            eprintln!("resuming {} from step {}", run_dir.display(), state.step);
        }
        state.loader_position = source.position();
        Run::assemble(
            cfg, &run_dir, device, start, opt, state, source, true, coll, accum,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: RunConfig,
        run_dir: &Path,
        device: Device,
        start: Start,
        opt: AdamW,
        state: TrainerState,
        source: Source,
        resumed: bool,
        coll: &'c dyn Collective,
        accum: usize,
    ) -> Result<Run<'c>> {
        let tokenizer = start.tokenizer;
        let model = build_model(
            &state.model,
            &start.params,
            start.lora.as_ref(),
            candle_core::DType::F32,
        )?;
        let token_bytes = tokenizer
            .as_ref()
            .map(|t| t.token_bytes())
            .unwrap_or_default();
        // Rank 0 keeps the log.
        let metrics = match coll.is_lead() {
            true => Some(MetricsLog::open(run_dir, resumed.then_some(state.step))?),
            false => None,
        };
        let profile = super::profile::StepProfile::new(cfg.train.profile, &device);
        Ok(Run {
            cfg,
            coll,
            accum,
            run_dir: run_dir.to_path_buf(),
            device,
            params: start.params,
            lora: start.lora,
            model,
            opt,
            source,
            tokenizer,
            token_bytes,
            state,
            metrics,
            profile,
        })
    }
}

/// The batches of a run: token shards, or the chat files of a fine-tuning run. Pre-training takes
/// the tokenizer saved beside its shards, if any, into `tokenizer`; fine-tuning needs the model's.
fn open_source(
    cfg: &RunConfig,
    model: &ModelConfig,
    tokenizer: &mut Option<Tokenizer>,
    rank: usize,
    world: usize,
) -> Result<Source> {
    if !cfg.is_sft() {
        let (_, train, val, data_tok) = open_data(cfg, model)?;
        *tokenizer = data_tok;
        let loader = BatchLoader::new(train, cfg.train.batch_size, cfg.train.seed, rank, world)?;
        return Ok(Source::Tokens { loader, val });
    }
    let tok = tokenizer
        .as_ref()
        .ok_or_else(|| Error::Config("fine-tuning needs the model's tokenizer".into()))?;
    super::sft::open_chat(cfg, model, tok, rank, world)
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
