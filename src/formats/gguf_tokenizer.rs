//! The tokenizer a GGUF file stores (`tokenizer.ggml.*`): byte-level BPE rebuilt from its
//! vocabulary and merges, control tokens as special tokens, and the chat template.

use super::gguf::GgufFile;
use crate::error::Result;
use crate::tokenizer::Tokenizer;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

impl GgufFile {
    /// The byte-level BPE tokenizer stored in the file (`tokenizer.ggml.model` = "gpt2"), with
    /// control tokens as special tokens and the file's chat template.
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
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
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
