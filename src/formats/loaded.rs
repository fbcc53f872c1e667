//! A model from disk, whatever its format: an HF directory, a GGUF file, or a PEFT adapter merged
//! onto its base; and writing a complete HF model directory.

use super::model_card::ModelCard;
use super::{gguf, hf, peft};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Transformer};
use crate::ops::linear::BlockWeights;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// A model (HF directory or GGUF file) loaded into memory: config, weights (internal names, f32)
/// and tokenizer.
pub struct LoadedModel {
    pub cfg: ModelConfig,
    /// The weights as tensors, except those held in `blocks`.
    pub weights: BTreeMap<String, Tensor>,
    /// The weights a GGUF file stores as Q4_1 or Q8_0, on the CPU: kept in those blocks, as they
    /// lie (inference runs on them; [`LoadedModel::f32_weights`] expands them).
    pub blocks: BlockWeights,
    pub tokenizer: Option<Tokenizer>,
    /// Loaded from a GGUF file whose layers are quantized: their format (inference keeps them
    /// quantized, see [`LoadedModel::inference_transformer`]).
    pub quantized: Option<GgmlDType>,
}

impl LoadedModel {
    /// Loads an HF model directory. The tokenizer is optional (some directories hold weights only),
    /// but when present its vocabulary must fit the model's embedding.
    /// `path` may also name a Hub model (`ORG/NAME[@REVISION]`, or `ORG/NAME/FILE.gguf`): the
    /// cached copy is loaded, downloaded first when the cache does not hold it whole.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let resolved = super::hub::resolve_model(path)?;
        let path = resolved.as_path();
        if path.is_file() {
            if gguf::has_gguf_extension(path) {
                let g = gguf::load_gguf(path, device)?;
                check_vocab(&g.cfg, &g.tokenizer, path)?;
                return Ok(LoadedModel {
                    cfg: g.cfg,
                    weights: g.weights,
                    blocks: g.blocks,
                    tokenizer: Some(g.tokenizer),
                    quantized: g.quantized,
                });
            }
            return Err(Error::bad_file(
                path,
                "a model is a Hugging Face model directory or a .gguf file",
            ));
        }
        if path.join(peft::ADAPTER_CONFIG).exists() {
            return Self::load_adapter(path, device);
        }
        let (cfg, weights) = hf::load_model_dir(path, device)?;
        let has_tok = path.join("tokenizer.json").exists() || path.join("vocab.json").exists();
        let tokenizer = if has_tok {
            Some(Tokenizer::load(path)?)
        } else {
            None
        };
        if let Some(t) = &tokenizer {
            check_vocab(&cfg, t, path)?;
        }
        Ok(LoadedModel {
            cfg,
            weights,
            blocks: BlockWeights::new(),
            tokenizer,
            quantized: None,
        })
    }

    /// A PEFT LoRA directory: its base model with the adapter merged in (the adapter directory's own
    /// tokenizer files, if any, take precedence over the base's).
    fn load_adapter(dir: &Path, device: &Device) -> Result<Self> {
        let peft = peft::read_peft_config(dir)?;
        let base_path = peft::base_model_path(dir, &peft)?;
        if base_path.join(peft::ADAPTER_CONFIG).exists() {
            return Err(Error::bad_file(
                dir,
                "the base model is itself an adapter; merge it first (chatforge convert)",
            ));
        }
        let base = Self::load(&base_path, device)?;
        let (lcfg, _, adapter) = peft::load_adapter(dir, &base.cfg, device)?;
        let weights = crate::model::lora::merge(&base.cfg, &lcfg, &base.f32_weights()?, &adapter)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::load(dir)?)
        } else {
            base.tokenizer
        };
        Ok(LoadedModel {
            cfg: base.cfg,
            weights,
            blocks: BlockWeights::new(),
            tokenizer,
            quantized: None,
        })
    }

    /// Every weight as an f32 tensor: `weights`, and the blocks expanded (exactly the values the
    /// file holds).
    pub fn f32_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut all = self.weights.clone();
        let Some(device) = self.weights.values().next().map(|t| t.device().clone()) else {
            return Ok(all);
        };
        for (name, q) in &self.blocks {
            all.insert(
                name.clone(),
                Tensor::from_vec(q.dequantize(), q.dims(), &device)?,
            );
        }
        Ok(all)
    }

    /// The model in f32 (training, scoring, evaluation, `--weights f32`).
    pub fn transformer(&self) -> Result<Transformer> {
        Transformer::new(&self.cfg, &self.f32_weights()?)
    }

    /// The model for generation: on the CPU, a file stored quantized stays so. Its Q4_1 and Q8_0
    /// tensors are used as they lie, never expanded to f32 (`kernels::cpu::blockq`: Q4_1 layers
    /// times 8-bit activations, as llama.cpp multiplies them, a Q8_0 output projection times f32
    /// ones), for prompts as for decoding; layers in other formats get 8-bit (Q8_0) copies for
    /// decoding, which hold every Q4/Q5/Q6 value of the file to within half an 8-bit step, on
    /// candle's SIMD kernels, and keep their f32 weights for prompts.
    pub fn inference_transformer(&self) -> Result<Transformer> {
        let mut t = Transformer::with_blocks(&self.cfg, &self.weights, &self.blocks)?;
        if let (Some(q), true) = (self.quantized, t.device().is_cpu()) {
            t.quantize(match q {
                GgmlDType::Q4_1 => GgmlDType::Q4_1,
                _ => GgmlDType::Q8_0,
            })?;
        }
        Ok(t)
    }

    /// The model with its linear layers' weights in `weights` (see [`WeightFormat`]).
    pub fn transformer_with(&self, weights: WeightFormat) -> Result<Transformer> {
        let dtype = match weights {
            WeightFormat::Auto => return self.inference_transformer(),
            WeightFormat::F32 => return self.transformer(),
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::Q4_1 => GgmlDType::Q4_1,
        };
        let mut t = self.transformer()?;
        t.quantize(dtype)?;
        Ok(t)
    }

    pub fn tokenizer(&self, path: &Path) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| no_tokenizer(path))
    }

    /// The tokenizer, moved out (a clone would copy its vocabulary and merges).
    pub fn take_tokenizer(&mut self, path: &Path) -> Result<Tokenizer> {
        self.tokenizer.take().ok_or_else(|| no_tokenizer(path))
    }
}

fn no_tokenizer(path: &Path) -> Error {
    Error::bad_file(
        path,
        "this model directory has no tokenizer (tokenizer.json or vocab.json + merges.txt)",
    )
}

/// The tokenizer may not produce ids the model has no embedding for.
pub fn check_vocab(cfg: &ModelConfig, tok: &Tokenizer, path: &Path) -> Result<()> {
    if tok.vocab_size() > cfg.vocab_size {
        return Err(Error::Mismatch(format!(
            "{}: the tokenizer has {} tokens but the model's vocab_size is {}; use the tokenizer the model was trained with",
            path.display(),
            tok.vocab_size(),
            cfg.vocab_size
        )));
    }
    Ok(())
}

/// Writes a complete HF model directory (config, weights, tokenizer files, model card) atomically.
pub fn save_model_dir(
    dir: &Path,
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
    tokenizer: Option<&Tokenizer>,
    card: &ModelCard,
) -> Result<()> {
    crate::fsutil::write_dir_atomic(dir, |tmp| {
        hf::write_model_files(tmp, cfg, weights)?;
        super::model_card::write_card(tmp, card)?;
        if let Some(t) = tokenizer {
            t.save_to_dir(tmp, cfg.context)?;
        }
        Ok(())
    })
}

/// How the linear layers' weights are held for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As generate, chat and serve hold them by default ([`LoadedModel::inference_transformer`]).
    Auto,
    F32,
    /// 8-bit blocks on candle's quantized matmul.
    Q8_0,
    /// chatforge's 4-bit blocks (GGML's Q4_1) times 8-bit activations.
    Q4_1,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(WeightFormat::Auto),
            "f32" => Ok(WeightFormat::F32),
            "q8_0" => Ok(WeightFormat::Q8_0),
            "q4_1" => Ok(WeightFormat::Q4_1),
            _ => Err(format!("'{s}': expected auto, f32, q8_0 or q4_1")),
        }
    }
}
