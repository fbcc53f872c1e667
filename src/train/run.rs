//! A training run: what it holds (`Run`), and its two constructors, a new run in an empty
//! directory and a resumed one from its newest checkpoint.

use super::checkpoint::{load_checkpoint, resolve_checkpoint, TrainerState};
use super::data::open_source;
use super::metrics::MetricsLog;
use super::optim::{AdamW, AdamWConfig};
use super::source::Source;
use super::start::{build_model, LoraRun, Start};
use crate::config::RunConfig;
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Changes to a resumed run's config (a command's flags, then `--set` overrides; see
/// `RunConfig::apply_overrides`), checked before the run goes on.
pub type ConfigEdit<'a> = &'a dyn Fn(&mut RunConfig) -> Result<()>;

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

/// Sets every parameter to rank 0's values (one broadcast of all of them, in name order).
fn broadcast_params(params: &Params, coll: &dyn Collective) -> Result<()> {
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
        check_run_dir(run_dir, coll, restart)?;
        // The lead downloads a base model or data named on the Hub; the other ranks then find
        // them in the cache (hf-hub's lock would turn them away while it downloads).
        if coll.is_lead() {
            super::start::fetch_hub_inputs(&cfg)?;
        }
        // Every rank has looked before rank 0 creates the run.
        coll.barrier();
        let device = coll.device(cfg.train.device)?;
        let mut start = super::start::fresh(&mut cfg, &device)?;
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
        edit: ConfigEdit,
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
            let mut cfg = RunConfig::load(Some(&saved_config), &[])?;
            edit(&mut cfg)?;
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
        // The saved config with the command's changes (e.g. more steps).
        let mut cfg = probe.config.clone();
        edit(&mut cfg)?;
        let accum = cfg.accumulation(world)?;
        let device = coll.device(cfg.train.device)?;
        let loaded = load_checkpoint(&ckpt, &device)?;
        let mut state = loaded.state;
        state.config = cfg.clone();
        let params = Params::from_tensors(&loaded.weights)?;
        let mut start = super::start::resumed(&cfg, &state.model, params, &ckpt, &device)?;
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
        mut source: Source,
        resumed: bool,
        coll: &'c dyn Collective,
        accum: usize,
    ) -> Result<Run<'c>> {
        let tokenizer = start.tokenizer;
        let mut lora = start.lora;
        if let Some(l) = &mut lora {
            l.name_peft_base(
                &cfg,
                run_dir,
                &state.model,
                tokenizer.as_ref(),
                coll.is_lead(),
            )?;
        }
        let model = build_model(
            &state.model,
            &start.params,
            lora.as_ref(),
            candle_core::DType::F32,
        )?;
        // Preference pairs: the reference's log-probabilities, once, before the policy moves.
        if cfg.is_dpo() {
            let now = super::start::frozen_model(&state.model, &start.params, lora.as_ref())?;
            source.attach_reference(&cfg, run_dir, &now, state.step == 0, coll)?;
        }
        // Reinforcement learning with a KL penalty keeps its reference model.
        if let (Source::Rollouts(r), true) = (&mut source, cfg.rl.kl > 0.0) {
            let m = &state.model;
            r.reference = Some(super::rl_source::kl_reference(
                &cfg,
                m,
                lora.as_ref(),
                &device,
            )?);
        }
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
            lora,
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

/// A new run's directory must not hold a run or anything else; a restart clears the killed run's
/// partial checkpoints.
fn check_run_dir(run_dir: &Path, coll: &dyn Collective, restart: bool) -> Result<()> {
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
    Ok(())
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
