//! Tokenizers: GPT-2's vocabulary against transformers' ids, round trips, training, bad input.

mod common;

use chatforge::tokenizer::{Tokenizer, CHATML_TEMPLATE, SPECIAL_TOKENS};
use common::*;
use proptest::prelude::*;
use std::sync::OnceLock;

fn gpt2() -> &'static Tokenizer {
    gpt2_tokenizer()
}

#[test]
fn gpt2_ids_equal_transformers() {
    let text = std::fs::read_to_string(fixtures().join("gpt2_tokenizer_ids.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let s = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(gpt2().encode(s).unwrap(), want, "ids of {s:?}");
        assert_eq!(gpt2().decode(&want).unwrap(), s);
    }
    assert_eq!(gpt2().vocab_size(), 50257);
    assert_eq!(gpt2().eot_id(), Some(50256));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn gpt2_decode_encode_is_identity(s in any::<String>()) {
        prop_assert_eq!(gpt2().decode(&gpt2().encode(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn trained_decode_encode_is_identity(s in any::<String>()) {
        let tok = trained();
        prop_assert_eq!(tok.decode(&tok.encode(&s).unwrap()).unwrap(), s);
    }
}

fn trained() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::train(&[shared_data().join("tinyshakespeare.txt")], 512).unwrap())
}

#[test]
fn training_gives_the_requested_vocabulary_with_chat_specials_first() {
    let tok = trained();
    assert_eq!(tok.vocab_size(), 512);
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(s), Some(i as u32), "{s}");
    }
    // Specials are matched whole, never split into bytes.
    let ids = tok.encode("<|im_start|>user\nhello<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    // Frequent words of the corpus became single tokens.
    assert_eq!(tok.encode(" the").unwrap().len(), 1);
    // The byte counts behind bits per byte add up to the text's length.
    let tb = tok.token_bytes();
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.";
    let n: u32 = tok
        .encode(text)
        .unwrap()
        .iter()
        .map(|&i| tb[i as usize])
        .sum();
    assert_eq!(n as usize, text.len());
}

#[test]
fn saved_tokenizer_directory_loads_back_with_its_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    trained().save_to_dir(tmp.path(), 256).unwrap();
    let back = Tokenizer::load(tmp.path()).unwrap();
    assert_eq!(back.chat_template.as_deref(), Some(CHATML_TEMPLATE));
    let s = "To be, or not to be: that is the question.";
    assert_eq!(back.encode(s).unwrap(), trained().encode(s).unwrap());
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["eos_token"], "<|endoftext|>");
    assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
}

#[test]
fn cli_encode_prints_json_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt2");
    let v = shared_data().join("gpt2_encoder.json");
    let m = shared_data().join("gpt2_vocab.bpe");
    let (code, _, err) = run(&[
        "tokenizer",
        "import-gpt2",
        "--vocab",
        v.to_str().unwrap(),
        "--merges",
        m.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        dir.to_str().unwrap(),
        "--text",
        "Hello world",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[15496,995]");
}

#[test]
fn training_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = Tokenizer::train(std::slice::from_ref(&empty), 512)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
    let bin = tmp.path().join("bin.txt");
    std::fs::write(&bin, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    let e = Tokenizer::train(&[bin], 512).err().unwrap().to_string();
    assert!(e.contains("bin.txt") && e.contains("UTF-8"), "{e}");
    let e = Tokenizer::train(&[shared_data().join("tinyshakespeare.txt")], 100)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab-size"), "{e}");
    let (code, _, err) = run(&[
        "tokenizer",
        "train",
        "--input",
        empty.to_str().unwrap(),
        "--out",
        tmp.path().join("t").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("empty") && !err.contains("panicked"), "{err}");
}
