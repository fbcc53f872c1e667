//! Hugging Face model directories: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) with `GPT2LMHeadModel` / `LlamaForCausalLM` tensor names.
//!
//! GPT-2 stores its linear layers as `Conv1D`, i.e. transposed (`[in, out]`); Llama stores q/k/v and
//! gate/up separately where we keep them fused. Both are converted here and only here.

use super::hf_config::{parse_hf_config, to_hf_config};
pub use super::hf_names::{blocks_from_hf, weights_from_hf, weights_from_hf_except, weights_to_hf};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::config::{Family, ModelConfig};
use crate::model::params::{check_finite, check_weights};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Tensors of one or more safetensors files, memory-mapped, looked up by name.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            // SAFETY: the file is opened read-only; like every mmap reader we assume nobody
            // truncates it while we hold the map.
            let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(p, e))?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
                Error::bad_file(p, format!("not a readable safetensors file ({e}); is it truncated or still downloading?"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((p.clone(), mmap));
        }
        Ok(SafetensorsFiles { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// Loads `name` as f32 on `device`, checking its shape when `shape` is given.
    pub fn load(&self, name: &str, shape: Option<&[usize]>, device: &Device) -> Result<Tensor> {
        let i = *self.index.get(name).ok_or_else(|| {
            Error::Mismatch(format!(
                "{}: tensor '{name}' is missing",
                self.files
                    .iter()
                    .map(|f| f.0.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let (path, mmap) = &self.files[i];
        let st =
            safetensors::SafeTensors::deserialize(mmap).map_err(|e| Error::bad_file(path, e))?;
        let view = st.tensor(name).map_err(|e| Error::bad_file(path, e))?;
        use safetensors::Dtype;
        if !matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            return Err(Error::bad_file(
                path,
                format!(
                    "tensor '{name}' is stored as {:?}; model weights must be floating point (F32, F16, BF16 or F64)",
                    view.dtype()
                ),
            ));
        }
        if let Some(s) = shape {
            if view.shape() != s {
                return Err(Error::Mismatch(format!(
                    "{}: tensor '{name}' has shape {:?} but config.json implies {:?}",
                    path.display(),
                    view.shape(),
                    s
                )));
            }
        }
        let t = view
            .load(device)
            .map_err(|e| Error::bad_file(path, format!("tensor '{name}': {e}")))?
            .to_dtype(DType::F32)?;
        crate::model::params::check_finite_tensor(name, &t, &path.display().to_string())?;
        Ok(t)
    }
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = fsutil::read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index, "missing object 'weight_map'"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        // Shards are files of this directory: a name with a path in it is not followed.
        if let Some(bad) = files
            .iter()
            .find(|f| Path::new(f).components().count() != 1 || f.starts_with('.'))
        {
            return Err(Error::bad_file(
                &index,
                format!("weight_map names '{bad}', which is not a file name in this directory"),
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(Error::bad_file(
        dir,
        "no model.safetensors or model.safetensors.index.json here (PyTorch .bin weights are not read; \
         convert them with transformers' save_pretrained(safe_serialization=True))",
    ))
}

/// Reads `config.json` of a model directory.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(Error::bad_file(
            dir,
            "not a model directory: config.json is missing",
        ));
    }
    parse_hf_config(&fsutil::read_json(&path)?, &path)
}

/// Loads config and weights of an HF model directory (internal names, f32).
pub fn load_model_dir(
    dir: &Path,
    device: &Device,
) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let cfg = load_config(dir)?;
    let files = SafetensorsFiles::open(&weight_files(dir)?)?;
    // Checkpoints from the original GPT-2 release have no "transformer." prefix.
    let strip_prefix = cfg.family == Family::Gpt2 && !files.contains("transformer.wte.weight");
    let weights = weights_from_hf(&cfg, |name, shape| {
        let name = if strip_prefix {
            name.trim_start_matches("transformer.")
        } else {
            name
        };
        files.load(name, Some(shape), device)
    })?;
    check_weights(&cfg, &weights, &dir.display().to_string())?;
    Ok((cfg, weights))
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` into `dir` (which must
/// exist; callers use `fsutil::write_dir_atomic` around this).
pub fn write_model_files(
    dir: &Path,
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
) -> Result<()> {
    cfg.validate()?;
    check_weights(cfg, weights, "weights to save")?;
    check_finite(weights, "weights to save")?;
    let config = serde_json::to_string_pretty(&to_hf_config(cfg)).expect("json");
    fsutil::write_atomic(&dir.join("config.json"), config.as_bytes())?;
    let gen = serde_json::json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "do_sample": true,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_length": cfg.context,
    });
    fsutil::write_atomic(
        &dir.join("generation_config.json"),
        serde_json::to_string_pretty(&gen).expect("json").as_bytes(),
    )?;
    save_safetensors(
        &dir.join("model.safetensors"),
        &weights_to_hf(cfg, weights)?,
    )
}

/// Writes tensors with the `{"format": "pt"}` metadata that `transformers` looks for, atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::bad_file(path, e))?;
    fsutil::write_atomic(path, &bytes)
}
