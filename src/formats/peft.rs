//! PEFT LoRA adapter directories: `adapter_config.json` and `adapter_model.safetensors` as PEFT
//! writes and reads them.

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig};
use crate::model::lora::{resolve_targets, slots, LoraConfig};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// `adapter_config.json` as PEFT writes it (the fields PEFT needs to load the adapter).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's Hub revision (PEFT passes it to `from_pretrained`).
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    /// Per-module ranks/alphas and layer selections (not supported when set).
    #[serde(default, skip_serializing)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub layers_to_transform: serde_json::Value,
}

/// PEFT writes a list of module names, or one string (a regex or `all-linear`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

/// `adapter_config.json` for these resolved targets.
pub fn peft_config_json(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    targets: &[String],
    base: &str,
) -> String {
    // A Hub base with a revision, `ORG/NAME@REV`, is written as PEFT writes it: name and revision.
    let (base, revision) = match super::hub::HubRef::model(base) {
        Some(r) if r.file.is_none() && r.revision != "main" => (r.repo, Some(r.revision)),
        _ => (base.to_string(), None),
    };
    let peft = PeftConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r: lora.rank,
        lora_alpha: lora.alpha,
        lora_dropout: lora.dropout,
        target_modules: TargetModules::List(targets.to_vec()),
        base_model_name_or_path: Some(base),
        revision,
        bias: Some("none".into()),
        // GPT-2's Conv1D layers store weights [in, out].
        fan_in_fan_out: cfg.family == Family::Gpt2,
        inference_mode: true,
        use_rslora: false,
        use_dora: false,
        modules_to_save: None,
        init_lora_weights: serde_json::Value::Bool(true),
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        layers_to_transform: serde_json::Value::Null,
    };
    serde_json::to_string_pretty(&peft).expect("config serializes")
}

/// Writes `dir` (atomically) as a PEFT adapter directory.
pub fn save_adapter(
    dir: &Path,
    cfg: &ModelConfig,
    lora: &LoraConfig,
    weights: &BTreeMap<String, Tensor>,
    base: &str,
    card: &super::model_card::ModelCard,
) -> Result<()> {
    let json = peft_config_json(cfg, lora, &resolve_targets(cfg, &lora.targets)?, base);
    crate::fsutil::write_dir_atomic(dir, |tmp| {
        write_adapter_files(tmp, &json, weights)?;
        super::model_card::write_card(tmp, card)
    })
}

/// The two adapter files, into an existing directory (a checkpoint's temporary one, say).
pub fn write_adapter_files(
    dir: &Path,
    config_json: &str,
    weights: &BTreeMap<String, Tensor>,
) -> Result<()> {
    crate::fsutil::write_atomic(&dir.join(ADAPTER_CONFIG), config_json.as_bytes())?;
    let list: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    super::hf::save_safetensors(&dir.join(ADAPTER_WEIGHTS), &list)
}

/// The base model an adapter directory names: a path as given, else relative to the adapter.
pub fn base_model_path(dir: &Path, peft: &PeftConfig) -> Result<std::path::PathBuf> {
    let cp = dir.join(ADAPTER_CONFIG);
    let name = peft.base_model_name_or_path.as_deref().ok_or_else(|| {
        Error::bad_file(
            &cp,
            "no base_model_name_or_path: cannot tell which model this adapter is for",
        )
    })?;
    let p = Path::new(name);
    for c in [dir.join(p), p.to_path_buf()] {
        if c.exists() {
            return Ok(c);
        }
    }
    if super::hub::is_repo_id(name) {
        let spec = match peft.revision.as_deref() {
            Some(rev) => format!("{name}@{}", rev.replace('/', "%2F")),
            None => name.to_string(),
        };
        return super::hub::resolve_model(Path::new(&spec)).map_err(|e| match e {
            Error::Hub(msg) => Error::Hub(format!(
                "{} names the base model {spec}: {msg}",
                cp.display()
            )),
            other => other,
        });
    }
    Err(Error::bad_file(
        &cp,
        format!(
            "the base model '{name}' is neither a local path nor a Hub id (ORG/NAME); set base_model_name_or_path to the base model's directory"
        ),
    ))
}

/// Reads `adapter_config.json`.
pub fn read_peft_config(dir: &Path) -> Result<PeftConfig> {
    let cp = dir.join(ADAPTER_CONFIG);
    serde_json::from_value(crate::fsutil::read_json(&cp)?)
        .map_err(|e| Error::bad_file(&cp, format!("not a PEFT adapter config: {e}")))
}

/// Reads a PEFT LoRA directory: its config (checked against the model) and weights.
pub fn load_adapter(
    dir: &Path,
    cfg: &ModelConfig,
    device: &Device,
) -> Result<(LoraConfig, PeftConfig, BTreeMap<String, Tensor>)> {
    let cp = dir.join(ADAPTER_CONFIG);
    let peft = read_peft_config(dir)?;
    if peft.peft_type != "LORA" {
        return Err(Error::bad_file(
            &cp,
            format!(
                "peft_type '{}': only LORA adapters are supported",
                peft.peft_type
            ),
        ));
    }
    if peft.use_dora || peft.use_rslora {
        return Err(Error::bad_file(
            &cp,
            "DoRA and rsLoRA adapters are not supported",
        ));
    }
    if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(Error::bad_file(&cp, "modules_to_save is not supported"));
    }
    if !peft.rank_pattern.is_empty()
        || !peft.alpha_pattern.is_empty()
        || !peft.layers_to_transform.is_null()
    {
        return Err(Error::bad_file(
            &cp,
            "rank_pattern, alpha_pattern and layers_to_transform are not supported",
        ));
    }
    let targets = match &peft.target_modules {
        TargetModules::List(l) => l.clone(),
        TargetModules::One(s) if s == "all-linear" => vec![s.clone()],
        TargetModules::One(s) => {
            return Err(Error::bad_file(
                &cp,
                format!(
                    "target_modules '{s}': a regular expression is not supported; list the modules"
                ),
            ))
        }
    };
    let lora = LoraConfig {
        rank: peft.r,
        alpha: peft.lora_alpha,
        targets: resolve_targets(cfg, &targets).map_err(|e| Error::bad_file(&cp, e.to_string()))?,
        dropout: peft.lora_dropout,
    };
    let files = super::hf::SafetensorsFiles::open(&[dir.join(ADAPTER_WEIGHTS)])?;
    let mut w = BTreeMap::new();
    for s in slots(cfg, &lora.targets)? {
        for (name, shape) in [
            (s.a_name(), [lora.rank, s.inp]),
            (s.b_name(), [s.out, lora.rank]),
        ] {
            // PEFT may keep the adapter name in older files: `...lora_A.default.weight`.
            let stored = if files.contains(&name) {
                name.clone()
            } else {
                name.replace(".weight", ".default.weight")
            };
            let t = files
                .load(&stored, Some(&shape), device)?
                .to_dtype(DType::F32)?;
            w.insert(name, t);
        }
    }
    Ok((lora, peft, w))
}
