//! What [`super::byte_bpe::ByteLevelBpe`] is built from, read off a `tokenizers` crate tokenizer:
//! whether its shape is GPT-2's (the checks), its BPE model, and its merges in rank order (the one
//! part the crate does not expose, read from the model's serialized form).

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use tokenizers::models::bpe::BPE;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;

/// The BPE model of `tokenizer`, or why the fast encoder would not give the crate's ids for it.
pub(crate) fn gpt2_shaped_bpe(tokenizer: &tokenizers::Tokenizer) -> Result<&BPE, String> {
    if tokenizer.get_normalizer().is_some() {
        return Err("it has a normalizer".into());
    }
    if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
        return Err("it truncates or pads".into());
    }
    match tokenizer.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space && b.use_regex => {}
        other => {
            return Err(format!(
                "its pre-tokenizer is not GPT-2's ByteLevel: {other:?}"
            ))
        }
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
