//! Hugging Face model directories: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) with `GPT2LMHeadModel` / `LlamaForCausalLM` tensor names.
//!
//! GPT-2 stores its linear layers as `Conv1D`, i.e. transposed (`[in, out]`); Llama stores q/k/v and
//! gate/up separately where we keep them fused. Both are converted here and only here.

use super::hf_config::{parse_hf_config, to_hf_config};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::kernels::cpu::blockq::BlockWeight;
use crate::model::config::{Family, ModelConfig};
use crate::model::params::{check_finite, check_weights};
use crate::ops::linear::BlockWeights;
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

/// Internal name -> HF tensors it is made of, with their HF shapes, and how to combine them.
enum Source {
    Same(String),
    /// A Conv1D weight stored `[in, out]`.
    Transposed(String),
    /// Stacked along dim 0 (q, k, v or gate, up).
    Concat(Vec<String>),
}

/// Each internal weight: where it comes from in an HF checkpoint, and the shapes expected there.
type Sources = Vec<(String, Source, Vec<Vec<usize>>)>;

fn hf_sources(cfg: &ModelConfig) -> Sources {
    let mut v = match cfg.family {
        Family::Gpt2 => gpt2_sources(cfg),
        Family::Llama => llama_sources(cfg),
    };
    if !cfg.tie_embeddings {
        v.push((
            "lm_head.weight".into(),
            Source::Same("lm_head.weight".into()),
            vec![vec![cfg.vocab_size, cfg.n_embd]],
        ));
    }
    v
}

/// GPT-2's names (`transformer.h.N...`, Conv1D weights stored `[in, out]`).
fn gpt2_sources(cfg: &ModelConfig) -> Sources {
    use Source::*;
    let (c, i_) = (cfg.n_embd, cfg.intermediate);
    let mut v = Vec::new();
    let mut push = |ours: String, src: Source, shapes: Vec<Vec<usize>>| v.push((ours, src, shapes));
    push(
        "wte.weight".into(),
        Same("transformer.wte.weight".into()),
        vec![vec![cfg.vocab_size, c]],
    );
    push(
        "wpe.weight".into(),
        Same("transformer.wpe.weight".into()),
        vec![vec![cfg.context, c]],
    );
    for l in 0..cfg.n_layer {
        let (o, t) = (format!("h.{l}"), format!("transformer.h.{l}"));
        for ln in ["ln_1", "ln_2"] {
            for wb in ["weight", "bias"] {
                push(
                    format!("{o}.{ln}.{wb}"),
                    Same(format!("{t}.{ln}.{wb}")),
                    vec![vec![c]],
                );
            }
        }
        push(
            format!("{o}.attn.qkv.weight"),
            Transposed(format!("{t}.attn.c_attn.weight")),
            vec![vec![c, 3 * c]],
        );
        push(
            format!("{o}.attn.qkv.bias"),
            Same(format!("{t}.attn.c_attn.bias")),
            vec![vec![3 * c]],
        );
        push(
            format!("{o}.attn.proj.weight"),
            Transposed(format!("{t}.attn.c_proj.weight")),
            vec![vec![c, c]],
        );
        push(
            format!("{o}.attn.proj.bias"),
            Same(format!("{t}.attn.c_proj.bias")),
            vec![vec![c]],
        );
        push(
            format!("{o}.mlp.fc.weight"),
            Transposed(format!("{t}.mlp.c_fc.weight")),
            vec![vec![c, i_]],
        );
        push(
            format!("{o}.mlp.fc.bias"),
            Same(format!("{t}.mlp.c_fc.bias")),
            vec![vec![i_]],
        );
        push(
            format!("{o}.mlp.proj.weight"),
            Transposed(format!("{t}.mlp.c_proj.weight")),
            vec![vec![i_, c]],
        );
        push(
            format!("{o}.mlp.proj.bias"),
            Same(format!("{t}.mlp.c_proj.bias")),
            vec![vec![c]],
        );
    }
    push(
        "ln_f.weight".into(),
        Same("transformer.ln_f.weight".into()),
        vec![vec![c]],
    );
    push(
        "ln_f.bias".into(),
        Same("transformer.ln_f.bias".into()),
        vec![vec![c]],
    );
    v
}

/// Llama's names (`model.layers.N...`, q/k/v and gate/up as separate projections).
fn llama_sources(cfg: &ModelConfig) -> Sources {
    use Source::*;
    let c = cfg.n_embd;
    let (h, k, d, i_) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate);
    let mut v = Vec::new();
    let mut push = |ours: String, src: Source, shapes: Vec<Vec<usize>>| v.push((ours, src, shapes));
    push(
        "wte.weight".into(),
        Same("model.embed_tokens.weight".into()),
        vec![vec![cfg.vocab_size, c]],
    );
    for l in 0..cfg.n_layer {
        let (o, t) = (format!("h.{l}"), format!("model.layers.{l}"));
        push(
            format!("{o}.ln_1.weight"),
            Same(format!("{t}.input_layernorm.weight")),
            vec![vec![c]],
        );
        push(
            format!("{o}.ln_2.weight"),
            Same(format!("{t}.post_attention_layernorm.weight")),
            vec![vec![c]],
        );
        let qkv = ["q", "k", "v"].map(|p| format!("{t}.self_attn.{p}_proj"));
        let qkv_rows = [h * d, k * d, k * d];
        push(
            format!("{o}.attn.qkv.weight"),
            Concat(qkv.iter().map(|p| format!("{p}.weight")).collect()),
            qkv_rows.iter().map(|&r| vec![r, c]).collect(),
        );
        if cfg.attn_bias {
            push(
                format!("{o}.attn.qkv.bias"),
                Concat(qkv.iter().map(|p| format!("{p}.bias")).collect()),
                qkv_rows.iter().map(|&r| vec![r]).collect(),
            );
            push(
                format!("{o}.attn.proj.bias"),
                Same(format!("{t}.self_attn.o_proj.bias")),
                vec![vec![c]],
            );
        }
        push(
            format!("{o}.attn.proj.weight"),
            Same(format!("{t}.self_attn.o_proj.weight")),
            vec![vec![c, h * d]],
        );
        let gu = ["gate", "up"].map(|p| format!("{t}.mlp.{p}_proj"));
        push(
            format!("{o}.mlp.fc.weight"),
            Concat(gu.iter().map(|p| format!("{p}.weight")).collect()),
            vec![vec![i_, c], vec![i_, c]],
        );
        push(
            format!("{o}.mlp.proj.weight"),
            Same(format!("{t}.mlp.down_proj.weight")),
            vec![vec![c, i_]],
        );
        if cfg.mlp_bias {
            push(
                format!("{o}.mlp.fc.bias"),
                Concat(gu.iter().map(|p| format!("{p}.bias")).collect()),
                vec![vec![i_], vec![i_]],
            );
            push(
                format!("{o}.mlp.proj.bias"),
                Same(format!("{t}.mlp.down_proj.bias")),
                vec![vec![c]],
            );
        }
    }
    push(
        "ln_f.weight".into(),
        Same("model.norm.weight".into()),
        vec![vec![c]],
    );
    v
}

/// Converts HF-named tensors (looked up through `get(name, shape)`) into internal weights.
pub fn weights_from_hf(
    cfg: &ModelConfig,
    get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    weights_from_hf_except(cfg, &BlockWeights::new(), get)
}

/// [`weights_from_hf`] without the weights that `held` holds in blocks.
pub fn weights_from_hf_except(
    cfg: &ModelConfig,
    held: &BlockWeights,
    mut get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (ours, src, shapes) in hf_sources(cfg) {
        if held.contains_key(&ours) {
            continue;
        }
        let t = match src {
            Source::Same(n) => get(&n, &shapes[0])?,
            Source::Transposed(n) => get(&n, &shapes[0])?.t()?.contiguous()?,
            Source::Concat(ns) => {
                let parts = ns
                    .iter()
                    .zip(&shapes)
                    .map(|(n, s)| get(n, s))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)?
            }
        };
        out.insert(ours, t);
    }
    Ok(out)
}

/// The internal weights whose every HF part `get` gives as quantized blocks (of the HF shape;
/// None for a tensor not stored so), the parts of a joined weight (query, key, value) joined by
/// rows. Weights stored transposed (GPT-2's Conv1D) are never held in blocks.
pub fn blocks_from_hf(
    cfg: &ModelConfig,
    mut get: impl FnMut(&str, &[usize]) -> Result<Option<BlockWeight>>,
) -> Result<BlockWeights> {
    let mut out = BlockWeights::new();
    for (ours, src, shapes) in hf_sources(cfg) {
        let q = match src {
            Source::Same(n) => get(&n, &shapes[0])?,
            Source::Transposed(_) => None,
            Source::Concat(ns) => {
                let parts = ns
                    .iter()
                    .zip(&shapes)
                    .map(|(n, s)| get(n, s))
                    .collect::<Result<Option<Vec<_>>>>()?;
                parts.map(|p| BlockWeight::concat_rows(&p)).transpose()?
            }
        };
        if let Some(q) = q {
            out.insert(ours, std::sync::Arc::new(q));
        }
    }
    Ok(out)
}

/// Converts internal tensors (weights, or gradients of them) to HF names and layouts.
pub fn weights_to_hf(
    cfg: &ModelConfig,
    ours: &BTreeMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, src, shapes) in hf_sources(cfg) {
        let Some(t) = ours.get(&name) else { continue };
        match src {
            Source::Same(n) => out.push((n, t.contiguous()?)),
            Source::Transposed(n) => out.push((n, t.t()?.contiguous()?)),
            Source::Concat(ns) => {
                let mut row = 0;
                for (n, s) in ns.into_iter().zip(shapes) {
                    out.push((n, t.narrow(0, row, s[0])?.contiguous()?));
                    row += s[0];
                }
            }
        }
    }
    Ok(out)
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
