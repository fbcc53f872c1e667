//! Byte-level BPE tokenizers (the `tokenizers` crate): training, loading GPT-2's `vocab.json` +
//! `merges.txt` or any `tokenizer.json`, and writing the tokenizer files of an HF model directory.
//! Tokenizers of GPT-2's shape encode through chatforge's own byte-level BPE ([`byte_bpe`]), which
//! gives the same ids several times faster.
//!
//! Chat special tokens follow ChatML: `<|im_start|>role\n...<|im_end|>`; documents end with
//! `<|endoftext|>`.

mod bpe_source;
mod byte_bpe;
mod gpt2_split;

use crate::error::{Error, Result};
use crate::fsutil;
pub use bpe_source::{gpt2_pre_tokenizer, BpeParts};
use byte_bpe::ByteLevelBpe;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const SPECIAL_TOKENS: [&str; 3] = [END_OF_TEXT, IM_START, IM_END];

/// ChatML, as a Jinja template for `tokenizer_config.json` (what transformers and llama.cpp read).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Jinja chat template, when the tokenizer came with one.
    pub chat_template: Option<String>,
    /// The faster encoder, built at the first `encode` (`Err`: why this tokenizer's shape is left
    /// to the `tokenizers` crate).
    fast: Arc<OnceLock<std::result::Result<ByteLevelBpe, String>>>,
    /// The tokenizer.json text `inner` was parsed from, until the fast encoder is built from it.
    source: Arc<std::sync::Mutex<Option<String>>>,
    vocab_size: usize,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// A tokenizer of the `tokenizers` crate, with the chat template that came with it.
    pub fn new(inner: tokenizers::Tokenizer, chat_template: Option<String>) -> Self {
        Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            chat_template,
            fast: Arc::default(),
            source: Arc::default(),
        }
    }

    /// The `tokenizers` crate's tokenizer this one is.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (special tokens included) on text files.
    pub fn train(files: &[PathBuf], vocab_size: usize) -> Result<Self> {
        if vocab_size < 256 + SPECIAL_TOKENS.len() {
            return Err(Error::Config(format!(
                "--vocab-size {vocab_size} is too small: a byte-level BPE needs at least {} (256 bytes + special tokens)",
                256 + SPECIAL_TOKENS.len()
            )));
        }
        for f in files {
            let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
            if meta.len() == 0 {
                return Err(Error::bad_file(
                    f,
                    "file is empty: nothing to train a tokenizer on",
                ));
            }
            // The trainer reads the files itself; make sure they are text first.
            fsutil::read_to_string(f)?;
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(
                SPECIAL_TOKENS
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
        .with_post_processor(Some(ByteLevel::default().trim_offsets(false).into()))
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .map_err(tk_err)?;
        let names = files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        tk.train_from_files(&mut trainer, names).map_err(tk_err)?;
        let json = tk.to_string(false).map_err(tk_err)?;
        let inner: tokenizers::Tokenizer = json.parse().map_err(tk_err)?;
        Ok(Tokenizer::parsed_from(
            json,
            inner,
            Some(CHATML_TEMPLATE.into()),
        ))
    }

    /// GPT-2's tokenizer from its `vocab.json` (a.k.a. `encoder.json`) and `merges.txt` (`vocab.bpe`).
    pub fn from_gpt2_files(vocab: &Path, merges: &Path) -> Result<Self> {
        for p in [vocab, merges] {
            if !p.exists() {
                return Err(Error::io(
                    p,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| Error::bad_file(vocab, format!("cannot read GPT-2 vocab/merges: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
        Ok(Tokenizer::new(inner, None))
    }

    /// Loads a tokenizer from a `tokenizer.json` file, or from a directory holding `tokenizer.json`
    /// (with `tokenizer_config.json` for the chat template) or GPT-2's `vocab.json` + `merges.txt`.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::from_tokenizer_json(path, None);
        }
        if !path.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let tj = path.join("tokenizer.json");
        let cfg = path.join("tokenizer_config.json");
        if tj.exists() {
            return Self::from_tokenizer_json(&tj, cfg.exists().then_some(cfg.as_path()));
        }
        let (v, m) = (path.join("vocab.json"), path.join("merges.txt"));
        if v.exists() && m.exists() {
            return Self::from_gpt2_files(&v, &m);
        }
        Err(Error::bad_file(
            path,
            "no tokenizer here: expected tokenizer.json, or vocab.json + merges.txt",
        ))
    }

    fn from_tokenizer_json(path: &Path, config: Option<&Path>) -> Result<Self> {
        let text = fsutil::read_to_string(path)?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| Error::bad_file(path, format!("not a valid tokenizer.json: {e}")))?;
        let chat_template = match config {
            Some(c) => fsutil::read_json(c)?
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(String::from),
            None => None,
        };
        Ok(Tokenizer::parsed_from(text, inner, chat_template))
    }

    /// [`Tokenizer::new`] for `inner` parsed from `text`, its tokenizer.json (or a JSON text with
    /// at least its `model.merges`): the fast encoder reads the merges from that text instead of
    /// serializing the crate's model again.
    pub(crate) fn parsed_from(
        text: String,
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
    ) -> Self {
        let tok = Tokenizer::new(inner, chat_template);
        *tok.source.lock().expect("not poisoned") = Some(text);
        tok
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id that separates documents: `<|endoftext|>`, else the tokenizer's `</s>`/`<|im_end|>`.
    pub fn eot_id(&self) -> Option<u32> {
        [END_OF_TEXT, "</s>", IM_END]
            .iter()
            .find_map(|t| self.token_id(t))
    }

    /// The ids of `text`, added tokens (`<|endoftext|>`, ...) included, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.fast_encoder() {
            Ok(fast) => Ok(fast.encode(text)),
            Err(_) => self.encode_with_tokenizers_crate(text),
        }
    }

    /// What [`Tokenizer::encode`] gives, computed by the `tokenizers` crate.
    pub fn encode_with_tokenizers_crate(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// Its vocabulary, added tokens and merges, for a plain byte-level BPE (as GGUF files store
    /// one); else why it is not one.
    pub fn bpe_parts(&self) -> std::result::Result<BpeParts, String> {
        bpe_source::bpe_parts(&self.inner)
    }

    /// The faster encoder, or why this tokenizer is encoded by the `tokenizers` crate.
    fn fast_encoder(&self) -> std::result::Result<&ByteLevelBpe, &str> {
        self.fast
            .get_or_init(|| {
                let source = self.source.lock().expect("not poisoned").take();
                ByteLevelBpe::from_tokenizer(&self.inner, source.as_deref())
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Whether `encode` runs chatforge's own byte-level BPE (`Err`: why not).
    pub fn fast_encoding(&self) -> std::result::Result<(), String> {
        self.fast_encoder().map(|_| ()).map_err(str::to_string)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// An upper bound on the bytes of text one token stands for (vocabulary and added tokens):
    /// a text of n bytes encodes to at least n / this many tokens.
    pub fn longest_token_bytes(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// UTF-8 bytes each token stands for (0 for special tokens): the denominator of bits per byte.
    pub fn token_bytes(&self) -> Vec<u32> {
        let n = self.vocab_size();
        let specials: std::collections::HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let byte_level = matches!(self.inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let unmap = byte_level_decoder_table();
        (0..n as u32)
            .map(|id| {
                if specials.contains(&id) {
                    return 0;
                }
                match self.inner.id_to_token(id) {
                    Some(tok) if byte_level => tok
                        .chars()
                        .map(|c| {
                            if unmap.contains_key(&c) {
                                1
                            } else {
                                c.len_utf8() as u32
                            }
                        })
                        .sum(),
                    Some(_) => self.decode(&[id]).map(|s| s.len() as u32).unwrap_or(0),
                    None => 0,
                }
            })
            .collect()
    }

    /// The chat template it came with, else ChatML when it has ChatML's tokens.
    pub fn chat_template_or_chatml(&self) -> Option<String> {
        self.chat_template.clone().or_else(|| {
            (self.token_id(IM_START).is_some() && self.token_id(IM_END).is_some())
                .then(|| CHATML_TEMPLATE.to_string())
        })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
    /// `special_tokens_map.json` into `dir`.
    pub fn save_to_dir(&self, dir: &Path, model_max_length: usize) -> Result<()> {
        let json = self.inner.to_string(false).map_err(tk_err)?;
        fsutil::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let eos = self.eot_id().and_then(|id| self.inner.id_to_token(id));
        let mut cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": false,
            "add_prefix_space": false,
        });
        if let Some(e) = &eos {
            cfg["eos_token"] = json!(e);
            cfg["bos_token"] = json!(e);
            cfg["unk_token"] = json!(e);
        }
        if self.token_id(IM_END).is_some() {
            cfg["pad_token"] = json!(END_OF_TEXT);
        }
        if let Some(t) = self.chat_template_or_chatml() {
            cfg["chat_template"] = json!(t);
        }
        fsutil::write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
        )?;
        let map = match eos {
            Some(e) => json!({"bos_token": e, "eos_token": e, "unk_token": e}),
            None => json!({}),
        };
        fsutil::write_atomic(
            &dir.join("special_tokens_map.json"),
            serde_json::to_string_pretty(&map).expect("json").as_bytes(),
        )
    }
}

/// GPT-2's byte-to-unicode table: the printable character that stands for each byte.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (c, b) in byte_level_decoder_table() {
        table[b as usize] = c;
    }
    table
}

/// GPT-2's byte-to-unicode table, inverted: the byte each printable character stands for.
fn byte_level_decoder_table() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (char::from_u32(c).expect("valid char"), b as u8))
        .collect()
}
