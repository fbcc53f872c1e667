//! What [`super::byte_bpe::ByteLevelBpe`] is built from, read off a `tokenizers` crate tokenizer:
//! whether its shape is GPT-2's (the checks), its BPE model, and its merges in rank order (the one
//! part the crate does not expose, read from the model's serialized form).

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;

/// The BPE model of `tokenizer` and whether its pre-tokenizer splits every digit off before
/// GPT-2's pattern (SmolLM's), or why the fast encoder would not give the crate's ids for it.
pub(crate) fn gpt2_shaped_bpe(tokenizer: &tokenizers::Tokenizer) -> Result<(&BPE, bool), String> {
    let split_digits = match gpt2_pre_tokenizer(tokenizer.get_pre_tokenizer()) {
        Some(split_digits) => split_digits,
        None => {
            return Err(format!(
                "its pre-tokenizer is not GPT-2's ByteLevel (after single digits, or not): {:?}",
                tokenizer.get_pre_tokenizer()
            ))
        }
    };
    Ok((plain_bpe(tokenizer)?, split_digits))
}

/// For GPT-2's pre-tokenizer (ByteLevel with its pattern, no prefix space), whether it is run
/// after one that splits every digit off (`Digits(individual_digits)`, as SmolLM's is); None for
/// other pre-tokenizers.
pub fn gpt2_pre_tokenizer(pre: Option<&PreTokenizerWrapper>) -> Option<bool> {
    let gpt2 = |p: &PreTokenizerWrapper| matches!(p, PreTokenizerWrapper::ByteLevel(b) if !b.add_prefix_space && b.use_regex);
    match pre? {
        p if gpt2(p) => Some(false),
        PreTokenizerWrapper::Sequence(s) => match s.as_ref() {
            [PreTokenizerWrapper::Digits(d), b] if d.individual_digits && gpt2(b) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// The BPE model of `tokenizer` if its ids depend only on its pre-tokenizer's pieces, its
/// vocabulary and its merges; else why not.
fn plain_bpe(tokenizer: &tokenizers::Tokenizer) -> Result<&BPE, String> {
    if tokenizer.get_normalizer().is_some() {
        return Err("it has a normalizer".into());
    }
    if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
        return Err("it truncates or pads".into());
    }
    match tokenizer.get_post_processor() {
        None | Some(PostProcessorWrapper::ByteLevel(_)) => {}
        Some(other) => return Err(format!("its post-processor is {other:?}")),
    }
    let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return Err("its model is not a BPE".into());
    };
    if bpe.dropout.is_some() {
        return Err("it has BPE dropout".into());
    }
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if set(&bpe.continuing_subword_prefix) || set(&bpe.end_of_word_suffix) {
        return Err("its BPE has a subword prefix or suffix".into());
    }
    for t in tokenizer.get_added_tokens_decoder().values() {
        if t.single_word || t.lstrip || t.rstrip {
            return Err(format!(
                "added token {:?} strips spaces or matches whole words",
                t.content
            ));
        }
    }
    Ok(bpe)
}

/// One merge as the crate writes it: `["a", "b"]`, or `"a b"` in older files.
struct Merge<'a>(Cow<'a, str>, Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Merge<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MergeVisitor;
        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = Merge<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a merge: ["a", "b"] or "a b""#)
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Merge<'de>, E> {
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| E::custom("no space in merge"))?;
                Ok(Merge(Cow::Borrowed(a), Cow::Borrowed(b)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Merge<'de>, E> {
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| E::custom("no space in merge"))?;
                Ok(Merge(Cow::Owned(a.into()), Cow::Owned(b.into())))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Merge<'de>, S::Error> {
                let mut half = || -> Result<Cow<'de, str>, S::Error> {
                    seq.next_element::<Cow<'de, str>>()?
                        .ok_or_else(|| serde::de::Error::custom("a merge needs two tokens"))
                };
                Ok(Merge(half()?, half()?))
            }
        }
        d.deserialize_any(MergeVisitor)
    }
}

#[derive(Deserialize)]
struct MergesOf<'a> {
    #[serde(borrow)]
    merges: Vec<Merge<'a>>,
}

#[derive(Deserialize)]
struct ModelOf<'a> {
    #[serde(borrow)]
    model: MergesOf<'a>,
}

/// Calls `f(rank, left, right)` for each merge of `bpe`, lowest rank first. `source` is the
/// tokenizer.json the crate read `bpe` from, when there is one: its merges are read directly
/// (the crate's own serialization of the model costs several times more).
pub(crate) fn for_each_merge(
    bpe: &BPE,
    source: Option<&str>,
    mut f: impl FnMut(usize, &str, &str) -> Result<(), String>,
) -> Result<(), String> {
    let serialized;
    let merges = match source.and_then(|s| serde_json::from_str::<ModelOf>(s).ok()) {
        Some(file) => file.model.merges,
        None => {
            serialized = serde_json::to_string(bpe).map_err(|e| e.to_string())?;
            serde_json::from_str::<MergesOf>(&serialized)
                .map_err(|e| e.to_string())?
                .merges
        }
    };
    for (rank, Merge(a, b)) in merges.iter().enumerate() {
        f(rank, a, b)?;
    }
    Ok(())
}

/// A byte-level BPE tokenizer taken apart as GGUF files store one (`tokenizer.ggml.*`).
pub struct BpeParts {
    /// Each id's token, in byte-level characters (`Ġthe`); None for an id no token has.
    pub tokens: Vec<Option<String>>,
    /// Per id: None for a vocabulary token, Some(special) for an added one.
    pub added: Vec<Option<bool>>,
    /// The merges, lowest rank first.
    pub merges: Vec<(String, String)>,
}

/// `tokenizer`'s vocabulary, added tokens and merges, or why it is not a plain byte-level BPE
/// (whatever its pre-tokenizer).
pub(crate) fn bpe_parts(tokenizer: &tokenizers::Tokenizer) -> Result<BpeParts, String> {
    let bpe = plain_bpe(tokenizer)?;
    if !matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
        return Err("its decoder is not byte-level".into());
    }
    let vocab = tokenizer.get_vocab(true);
    let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut tokens = vec![None; n];
    for (t, id) in vocab {
        tokens[id as usize] = Some(t);
    }
    let mut added = vec![None; n];
    for (id, t) in tokenizer.get_added_tokens_decoder() {
        if let Some(a) = added.get_mut(id as usize) {
            *a = Some(t.special);
        }
    }
    let mut merges = Vec::new();
    for_each_merge(bpe, None, |_, a, b| {
        merges.push((a.to_string(), b.to_string()));
        Ok(())
    })?;
    Ok(BpeParts {
        tokens,
        added,
        merges,
    })
}
