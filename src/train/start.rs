//! What a run trains: a fresh model (preset or `init_from`), a fine-tuning base (whole, or frozen
//! under fresh LoRA adapters), or a checkpoint's weights; and the model built over them.

use crate::config::{Precision, RunConfig};
use crate::data::load_meta;
use crate::error::{Error, Result};
use crate::formats::hub::hub_model;
use crate::formats::{Library, LoadedModel, ModelCard};
use crate::model::lora::{self, LoraConfig};
use crate::model::params::{init_weights, Params};
use crate::model::{ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
pub(super) struct Start {
    pub model: ModelConfig,
    pub params: Params,
    pub lora: Option<LoraRun>,
    pub tokenizer: Option<Tokenizer>,
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
            params: Params::from_tensors(&lm.f32_weights()?)?,
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
            lm.f32_weights()?,
            absolute(base),
            cfg.train.dtype,
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

/// The starting point of a new run; fine-tuning shortens `train.context` to the base model's.
pub(super) fn fresh(cfg: &mut RunConfig, device: &Device) -> Result<Start> {
    if cfg.is_sft() {
        let (p, lm) = load_base(cfg, device)?;
        // Fine-tuning rows are at most the model's context long.
        cfg.train.context = cfg.train.context.min(lm.cfg.context);
        return sft_start(cfg, lm, &p, device);
    }
    if cfg.model.init_from.is_empty() {
        let meta = load_meta(&cfg.data.dir)?;
        let mc = model_config_for(cfg, meta.vocab_size)?;
        let w = init_weights(&mc, cfg.train.seed, device)?;
        return Ok(Start {
            model: mc,
            params: Params::from_tensors(&w)?,
            lora: None,
            tokenizer: None,
        });
    }
    let p = PathBuf::from(&cfg.model.init_from);
    let lm = LoadedModel::load(&p, device)?;
    if cfg.train.context > lm.cfg.context {
        return Err(Error::Config(format!(
            "train.context {} is longer than the context of {} ({})",
            cfg.train.context,
            p.display(),
            lm.cfg.context
        )));
    }
    Ok(Start {
        params: Params::from_tensors(&lm.f32_weights()?)?,
        model: lm.cfg,
        lora: None,
        tokenizer: None,
    })
}

/// The starting point of a resumed run: the checkpoint's `params` over `model`, with the frozen
/// base of a LoRA run and the tokenizer a fine-tuning run needs.
pub(super) fn resumed(
    cfg: &RunConfig,
    model: &ModelConfig,
    params: Params,
    ckpt: &Path,
    device: &Device,
) -> Result<Start> {
    let model = model.clone();
    Ok(match (cfg.is_sft(), cfg.lora.rank) {
        (true, 0) => Start {
            model,
            params,
            lora: None,
            tokenizer: Some(Tokenizer::load(ckpt)?),
        },
        (true, _) => {
            let (p, lm) = load_base(cfg, device)?;
            Start {
                model,
                params,
                lora: Some(LoraRun::new(
                    lora_config(cfg),
                    lm.f32_weights()?,
                    absolute(&p),
                    cfg.train.dtype,
                )?),
                tokenizer: lm.tokenizer,
            }
        }
        (false, _) => Start {
            model,
            params,
            lora: None,
            tokenizer: None,
        },
    })
}

/// A LoRA run's fixed parts.
pub(super) struct LoraRun {
    pub cfg: LoraConfig,
    pub base: BTreeMap<String, Tensor>,
    /// The frozen base cast once for a bf16 run (its weights never change).
    pub base_bf16: Option<BTreeMap<String, Tensor>>,
    /// What adapter_config.json names as the base model ([`LoraRun::name_peft_base`]).
    pub base_path: String,
}

impl LoraRun {
    pub fn new(
        cfg: LoraConfig,
        base: BTreeMap<String, Tensor>,
        base_path: String,
        dtype: Precision,
    ) -> Result<Self> {
        let base_bf16 = match dtype {
            Precision::Bf16 => Some(cast_all(base.clone(), DType::BF16)?),
            Precision::F32 => None,
        };
        Ok(LoraRun {
            cfg,
            base,
            base_bf16,
            base_path,
        })
    }
}

/// Where a run writes the Hugging Face conversion of a GGUF base model.
pub const GGUF_BASE_DIR: &str = "base_model";

impl LoraRun {
    /// Names the base model in adapter_config.json so PEFT can load it: `model.base_id` when
    /// given, else the base's absolute path. PEFT reads no GGUF: a GGUF base is written once (by
    /// the lead) as the HF directory `RUN/base_model`, the weights the adapter was trained over.
    pub(super) fn name_peft_base(
        &mut self,
        cfg: &RunConfig,
        run_dir: &Path,
        model: &ModelConfig,
        tokenizer: Option<&Tokenizer>,
        lead: bool,
    ) -> Result<()> {
        if !cfg.model.base_id.is_empty() {
            self.base_path = cfg.model.base_id.clone();
            return Ok(());
        }
        let base = Path::new(&cfg.model.init_from);
        // A Hub model by name is named so (with its revision).
        if let Some(r) = hub_model(base).filter(|r| r.file.is_none()) {
            self.base_path = r.display();
            return Ok(());
        }
        if !crate::formats::gguf::has_gguf_extension(base) {
            return Ok(());
        }
        let dir = run_dir.join(GGUF_BASE_DIR);
        if lead && !dir.exists() {
            eprintln!(
                "writing the GGUF base as a Hugging Face model directory {} (the adapter's base_model_name_or_path, which PEFT loads; --base-id ORG/NAME names a Hub model instead)",
                dir.display()
            );
            let origin = format!("Converted by chatforge from `{}`.", base.display());
            let mut card = ModelCard::new(GGUF_BASE_DIR, model, Library::Transformers, &origin);
            card.license = (!cfg.model.license.is_empty()).then(|| cfg.model.license.clone());
            crate::formats::save_model_dir(&dir, model, &self.base, tokenizer, &card)?;
        }
        self.base_path = absolute(&dir);
        Ok(())
    }
}

/// Downloads (into the Hub cache) a base model or chat files the run names on the Hub.
pub(super) fn fetch_hub_inputs(cfg: &RunConfig) -> Result<()> {
    let base = Path::new(&cfg.model.init_from);
    if hub_model(base).is_some() {
        crate::formats::hub::resolve_model(base)?;
    }
    for f in &cfg.sft.data {
        crate::formats::hub::resolve_data_file(f)?;
    }
    Ok(())
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

/// The model as it is now, for scoring without gradients: detached weights, so that candle keeps
/// no graph and the model runs its inference kernels (fused attention).
pub(super) fn frozen_model(
    cfg: &ModelConfig,
    params: &Params,
    lora: Option<&LoraRun>,
) -> Result<Transformer> {
    let now: BTreeMap<String, Tensor> = params
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.detach()))
        .collect();
    match lora {
        None => Transformer::new(cfg, &now),
        Some(l) => {
            let ad = crate::model::lora::adapters(cfg, &l.cfg, &now)?;
            Transformer::with_adapters(cfg, &l.base, ad)
        }
    }
}
