//! Training checkpoints: an HF model directory plus `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json` (step, loader position, seed, configs) — enough to resume bit-exactly.
//! Each is written to a temporary directory and renamed into place, so a crash at any instant leaves
//! the previous checkpoint whole.

use super::optim::AdamW;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::formats::hf::{save_safetensors, write_model_files, SafetensorsFiles};
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FORMAT: &str = "chatforge-trainer-state-v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: usize,
    /// Batches the loader has handed out (its whole state, with the seed).
    pub loader_position: u64,
    /// Seeds the loader and the text samples; initialisation used it too.
    pub seed: u64,
    pub tokens_seen: u64,
    pub optimizer_t: u64,
    pub elapsed_seconds: f64,
    pub last_val_loss: Option<f64>,
    /// Processes of the data-parallel run (checkpoints from before MPI: 1); a resume needs as many.
    #[serde(default = "one")]
    pub world: usize,
    pub config: RunConfig,
    pub model: ModelConfig,
}

impl TrainerState {
    pub fn new(config: RunConfig, model: ModelConfig) -> Self {
        TrainerState {
            format: STATE_FORMAT.into(),
            step: 0,
            loader_position: 0,
            seed: config.train.seed,
            tokens_seen: 0,
            optimizer_t: 0,
            elapsed_seconds: 0.0,
            last_val_loss: None,
            world: 1,
            config,
            model,
        }
    }
}

fn one() -> usize {
    1
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// What a checkpoint holds of the model: all of it, or (LoRA) the adapter in PEFT's layout.
pub enum CheckpointWeights {
    Model(BTreeMap<String, Tensor>),
    Adapter {
        config_json: String,
        weights: BTreeMap<String, Tensor>,
    },
}

impl CheckpointWeights {
    fn tensors(&self) -> &BTreeMap<String, Tensor> {
        match self {
            CheckpointWeights::Model(w) => w,
            CheckpointWeights::Adapter { weights, .. } => weights,
        }
    }
}

/// Writes `run_dir/checkpoints/step_NNNNNN`. Older checkpoints are left for [`prune`]: the loop
/// prunes only once a later step's loss has shown the new checkpoint's weights to be sound.
pub fn save_checkpoint(
    run_dir: &Path,
    state: &TrainerState,
    weights: &CheckpointWeights,
    tokenizer: Option<&Tokenizer>,
    opt: &AdamW,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir).join(format!("step_{:06}", state.step));
    crate::fsutil::write_dir_atomic(&dir, |tmp| {
        match weights {
            CheckpointWeights::Model(w) => write_model_files(tmp, &state.model, w)?,
            CheckpointWeights::Adapter {
                config_json,
                weights,
            } => crate::formats::peft::write_adapter_files(tmp, config_json, weights)?,
        }
        if let Some(t) = tokenizer {
            t.save_to_dir(tmp, state.model.context)?;
        }
        // Lets a test kill the process in the middle of a checkpoint write: "STEP:MS" pauses the
        // write of that step's checkpoint halfway for MS milliseconds.
        if let Ok(v) = std::env::var("CHATFORGE_TEST_CHECKPOINT_PAUSE") {
            if let Some((s, ms)) = v.split_once(':') {
                if s.parse() == Ok(state.step) {
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                }
            }
        }
        debug_assert!(weights.tensors().keys().eq(opt.m.keys()));
        let mut moments: Vec<(String, Tensor)> = Vec::new();
        for (k, m) in &opt.m {
            moments.push((format!("m.{k}"), m.contiguous()?));
            moments.push((format!("v.{k}"), opt.v[k].contiguous()?));
        }
        for (name, m) in &moments {
            crate::model::params::check_finite_tensor(name, m, "optimizer state to save")?;
        }
        save_safetensors(&tmp.join(OPTIMIZER_FILE), &moments)?;
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        crate::fsutil::write_atomic(&tmp.join(STATE_FILE), json.as_bytes())
    })?;
    Ok(dir)
}

/// Whether `dir` holds every file a checkpoint is written with (anything less is ignored).
fn is_complete(dir: &Path) -> bool {
    let weights = dir.join(crate::formats::peft::ADAPTER_WEIGHTS).exists()
        || (dir.join("model.safetensors").exists() && dir.join("config.json").exists());
    weights && dir.join(STATE_FILE).exists() && dir.join(OPTIMIZER_FILE).exists()
}

/// Completed checkpoints of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step_"))
                && is_complete(p)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Keeps the `keep` newest checkpoints. Each older one is first renamed to `.step_N.old-PID` (one
/// atomic step that makes it invisible to [`list_checkpoints`]), then deleted: an interrupted prune
/// leaves a hidden leftover for [`remove_partial_checkpoints`], never a half-deleted checkpoint that
/// looks whole.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(run_dir)?;
    for old in &all[..all.len().saturating_sub(keep.max(1))] {
        let name = old.file_name().unwrap_or_default().to_string_lossy();
        let aside = old.with_file_name(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(old, &aside).map_err(|e| Error::io(old, e))?;
        // Lets a test kill the process in the middle of a prune.
        if let Ok(ms) = std::env::var("CHATFORGE_TEST_PRUNE_PAUSE") {
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
    }
    Ok(())
}

/// Moves the checkpoints of step `from` and later to `run_dir/diverged/` (out of `--resume`'s
/// sight, kept for inspection) and returns where they went.
pub fn set_aside_from(run_dir: &Path, from: usize) -> Result<Vec<PathBuf>> {
    let aside_dir = run_dir.join("diverged");
    let mut moved = Vec::new();
    for ckpt in list_checkpoints(run_dir)? {
        let name = ckpt
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let step: usize = name.trim_start_matches("step_").parse().unwrap_or(0);
        if step >= from {
            std::fs::create_dir_all(&aside_dir).map_err(|e| Error::io(&aside_dir, e))?;
            // An earlier divergence's step_N stays: this one becomes step_N.2, .3, ...
            let mut to = aside_dir.join(&name);
            let mut n = 1;
            while to.exists() {
                n += 1;
                to = aside_dir.join(format!("{name}.{n}"));
            }
            std::fs::rename(&ckpt, &to).map_err(|e| Error::io(&ckpt, e))?;
            moved.push(to);
        }
    }
    Ok(moved)
}

/// Removes the temporary directories of checkpoint writes that a crash interrupted.
pub fn remove_partial_checkpoints(run_dir: &Path) -> Result<()> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step_") && (name.contains(".tmp-") || name.contains(".old-")) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// The run directory of a `--resume` path: the path itself, or for a checkpoint
/// (`RUN/checkpoints/step_N`) its run's.
pub fn run_dir_of(resume: &Path) -> PathBuf {
    match resume.join(STATE_FILE).exists() {
        true => resume
            .parent()
            .and_then(Path::parent)
            .unwrap_or(resume)
            .to_path_buf(),
        false => resume.to_path_buf(),
    }
}

/// A checkpoint directory, or the newest checkpoint of a run directory.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).exists() {
        if !is_complete(path) {
            return Err(Error::bad_file(
                path,
                format!("--resume: this checkpoint is incomplete (it needs {STATE_FILE}, {OPTIMIZER_FILE} and its weights); resume from the run directory to take its newest complete checkpoint"),
            ));
        }
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(Error::bad_file(path, "--resume: no such directory"));
    }
    list_checkpoints(path)?.pop().ok_or_else(|| {
        Error::bad_file(
            path,
            format!("--resume: not a checkpoint (no {STATE_FILE}) and not a run directory with checkpoints/step_*"),
        )
    })
}

pub struct LoadedCheckpoint {
    pub state: TrainerState,
    pub weights: BTreeMap<String, Tensor>,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
}

pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let sp = dir.join(STATE_FILE);
    let text = crate::fsutil::read_to_string(&sp)?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(&sp, format!("malformed trainer state: {e}")))?;
    if state.format != STATE_FORMAT {
        return Err(Error::bad_file(
            &sp,
            format!("unknown trainer state format '{}'", state.format),
        ));
    }
    let adapter = dir.join(crate::formats::peft::ADAPTER_WEIGHTS);
    let weights = if adapter.exists() {
        let files = SafetensorsFiles::open(std::slice::from_ref(&adapter))?;
        let mut w = BTreeMap::new();
        for name in files.names() {
            w.insert(name.clone(), files.load(name, None, device)?);
        }
        w
    } else {
        let (cfg, weights) = crate::formats::hf::load_model_dir(dir, device)?;
        if cfg != state.model {
            return Err(Error::bad_file(
                dir,
                "config.json disagrees with trainer_state.json's model config",
            ));
        }
        weights
    };
    let files = SafetensorsFiles::open(&[dir.join(OPTIMIZER_FILE)])?;
    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    for (k, w) in &weights {
        m.insert(
            k.clone(),
            files.load(&format!("m.{k}"), Some(w.dims()), device)?,
        );
        v.insert(
            k.clone(),
            files.load(&format!("v.{k}"), Some(w.dims()), device)?,
        );
    }
    Ok(LoadedCheckpoint {
        state,
        weights,
        m,
        v,
    })
}
