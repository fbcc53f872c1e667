//! The tokenizer a GGUF file stores (`tokenizer.ggml.*`), both ways: read, byte-level BPE rebuilt
//! from its vocabulary and merges with control tokens as special tokens, and the chat template;
//! written, the same metadata for a tokenizer of GPT-2's shape.

use super::gguf::GgufFile;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tokenizer::{gpt2_pre_tokenizer, Tokenizer, IM_END};
use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

impl GgufFile {
    /// The byte-level BPE tokenizer stored in the file (`tokenizer.ggml.model` = "gpt2"), with
    /// its pre-tokenizer (`tokenizer.ggml.pre`, see [`pre_tokenizer`]), control tokens as special
    /// tokens and the file's chat template.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let model = self.string("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(self.err(format!(
                "tokenizer model '{model}' is not supported; chatforge reads byte-level BPE (\"gpt2\") GGUF tokenizers"
            )));
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(&str, &str)> = self
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .ok_or_else(|| self.err(format!("malformed merge '{m}'")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<i32> = match self.content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| self.err("tokenizer.ggml.token_type is not an array"))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| (t.to_string(), i as u32))
            .collect();
        // The fast encoder reads the merges in rank order from tokenizer.json's form of them,
        // which the crate's model would otherwise have to serialize, whole vocabulary and all.
        let merges_json = serde_json::json!({ "model": { "merges": &merges } }).to_string();
        let owned = merges
            .iter()
            .map(|&(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, owned)
            .build()
            .map_err(|e| self.err(format!("cannot build the BPE tokenizer: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = self.string("tokenizer.ggml.pre").unwrap_or_default();
        inner.with_pre_tokenizer(Some(pre_tokenizer(&pre)));
        inner.with_decoder(Some(ByteLevel::default()));
        // Token type 3 is "control" (<|im_start|> and the like), 4 "user defined".
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(&s, _)| AddedToken::from(s, true))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Tokenizer::parsed_from(
            merges_json,
            inner,
            self.string("tokenizer.chat_template"),
        ))
    }
}

/// GPT-2's pre-tokenizer: its regex, spaces kept as they are.
fn gpt2_pre() -> PreTokenizerWrapper {
    ByteLevel::default().add_prefix_space(false).into()
}

/// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` names: SmolLM's splits every digit off
/// first; the others are read as GPT-2's (llama.cpp's own regexes for them differ around digits
/// and punctuation).
fn pre_tokenizer(name: &str) -> PreTokenizerWrapper {
    match name {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), gpt2_pre()]).into(),
        _ => gpt2_pre(),
    }
}

/// llama.cpp's name for `pre`, when one of its pre-tokenizers splits text exactly as `pre` does.
fn llama_cpp_pre_name(pre: Option<&PreTokenizerWrapper>) -> Option<&'static str> {
    match gpt2_pre_tokenizer(pre)? {
        false => Some("gpt-2"),
        true => Some("smollm"),
    }
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` metadata llama.cpp reads, for `tok` on a model of `cfg`: byte-level BPE
/// ("gpt2") with the pre-tokenizer's llama.cpp name, the vocabulary padded to the model's rows
/// with unused `[PADn]` tokens (as llama.cpp's converter pads), added tokens as control (special)
/// or user-defined ones, the merges, the special ids, no BOS added (chatforge adds none), and
/// the chat template.
pub(super) fn tokenizer_metadata(
    tok: &Tokenizer,
    cfg: &ModelConfig,
) -> Result<Vec<(String, Value)>> {
    let refuse = |why: String| {
        Error::Config(format!(
            "this tokenizer cannot be written to GGUF so that llama.cpp splits text as chatforge \
             does: {why}; GGUF export takes byte-level BPE tokenizers with GPT-2's or SmolLM's \
             pre-tokenizer (`chatforge tokenizer train` makes the first)"
        ))
    };
    let pre_tokenizer = tok.hf().get_pre_tokenizer();
    let pre = llama_cpp_pre_name(pre_tokenizer)
        .ok_or_else(|| refuse(format!("its pre-tokenizer is {pre_tokenizer:?}")))?;
    let parts = tok.bpe_parts().map_err(refuse)?;
    if parts.tokens.len() > cfg.vocab_size {
        return Err(Error::Mismatch(format!(
            "the tokenizer has {} ids but the model's vocab_size is {}",
            parts.tokens.len(),
            cfg.vocab_size
        )));
    }
    let mut tokens = Vec::with_capacity(cfg.vocab_size);
    let mut types = Vec::with_capacity(cfg.vocab_size);
    for id in 0..cfg.vocab_size {
        let (t, ty) = match (parts.tokens.get(id).cloned().flatten(), parts.added.get(id)) {
            (Some(t), Some(Some(true))) => (t, CONTROL),
            (Some(t), Some(Some(false))) => (t, USER_DEFINED),
            (Some(t), _) => (t, NORMAL),
            (None, _) => (format!("[PAD{id}]"), UNUSED),
        };
        tokens.push(Value::String(t));
        types.push(Value::I32(ty));
    }
    let merges = parts
        .merges
        .into_iter()
        .map(|(a, b)| Value::String(format!("{a} {b}")))
        .collect();
    let id = |name: &str, v: u32| (format!("tokenizer.ggml.{name}"), Value::U32(v));
    let mut m = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
    ];
    let eot = tok.eot_id();
    if let Some(b) = cfg.bos_token_id.or(eot) {
        m.push(id("bos_token_id", b));
    }
    // A chat model's replies end with <|im_end|>; llama.cpp also stops at every other
    // end-of-generation token it knows by name (<|endoftext|>, <|im_end|>, ...).
    if let Some(e) = cfg.eos_token_id.or(tok.token_id(IM_END)).or(eot) {
        m.push(id("eos_token_id", e));
    }
    if let Some(p) = eot {
        m.push(id("padding_token_id", p));
    }
    if let Some(t) = tok.chat_template_or_chatml() {
        m.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(m)
}
