//! chatforge's own byte-level BPE encoder against the `tokenizers` crate it replaces: the same ids
//! for GPT-2's tokenizer, a trained one and SmolLM2's (from its GGUF), on real multilingual text,
//! every character, long pieces and random strings; tokenizers of other shapes fall back to the crate.

mod common;

use chatforge::tokenizer::Tokenizer;
use common::*;
use proptest::prelude::*;
use std::sync::OnceLock;

fn gpt2() -> &'static Tokenizer {
    gpt2_tokenizer()
}

fn trained() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::train(&[shared_data().join("tatoeba_enfr_train.jsonl")], 2048).unwrap()
    })
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        chatforge::formats::gguf::GgufFile::open(
            &shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        )
        .unwrap()
        .tokenizer()
        .unwrap()
    })
}

/// GPT-2's tokenizer edited as tokenizer.json: `edit` changes its JSON before it is parsed back.
fn gpt2_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Tokenizer {
    let mut json: serde_json::Value =
        serde_json::from_str(&gpt2().hf().to_string(false).unwrap()).unwrap();
    edit(&mut json);
    Tokenizer::new(json.to_string().parse().unwrap(), None)
}

fn all() -> Vec<(&'static str, &'static Tokenizer)> {
    vec![
        ("gpt2", gpt2()),
        ("trained", trained()),
        ("smollm2", smollm2()),
    ]
}

fn assert_same_ids(name: &str, tok: &Tokenizer, text: &str) {
    let fast = tok.encode(text).unwrap();
    let crate_ids = tok.encode_with_tokenizers_crate(text).unwrap();
    if fast != crate_ids {
        let at = fast
            .iter()
            .zip(&crate_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let context = tok.decode(&crate_ids[at.saturating_sub(3)..(at + 3).min(crate_ids.len())]);
        panic!(
            "{name}: the ids differ from token {at} of {} (near {context:?}): ours {:?}, the crate's {:?}",
            crate_ids.len(),
            &fast[at..(at + 5).min(fast.len())],
            &crate_ids[at..(at + 5).min(crate_ids.len())]
        );
    }
}

#[test]
fn the_tokenizers_chatforge_makes_and_reads_take_the_fast_path() {
    for (name, tok) in all() {
        assert_eq!(tok.fast_encoding(), Ok(()), "{name}");
    }
    // Written as tokenizer.json and read back, as `data prepare` and every model directory do.
    let dir = tempfile::tempdir().unwrap();
    trained().save_to_dir(dir.path(), 1024).unwrap();
    let loaded = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(loaded.fast_encoding(), Ok(()));
    let text = "The tokenizer.json round trip keeps every id.<|im_end|>";
    assert_eq!(
        loaded.encode(text).unwrap(),
        trained().encode(text).unwrap()
    );
    let book = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    assert_same_ids(
        "trained, loaded from tokenizer.json",
        &loaded,
        &book[..300_000],
    );
}

#[test]
fn same_ids_on_real_text_in_several_languages() {
    let files = [
        "tinyshakespeare.txt",
        "tatoeba_enfr_train.jsonl",
        "gsm8k_test.jsonl",
        "goemotions_sentiment_dev.jsonl",
        "crows_pairs_anonymized.csv",
        "scitldr_dev.jsonl",
    ];
    for file in files {
        let text = std::fs::read_to_string(shared_data().join(file)).unwrap();
        // JSON escapes undone, so that accents, emoji and quotes are met as characters.
        let text: String = text
            .lines()
            .take(3000)
            .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) => format!("{v:#}\n"),
                Err(_) => format!("{l}\n"),
            })
            .collect::<String>()
            .replace("\\n", "\n");
        for (name, tok) in all() {
            assert_same_ids(&format!("{name} on {file}"), tok, &text);
        }
    }
}

#[test]
fn same_ids_for_every_character() {
    // Each character alone, doubled, after a space, between letters and digits, before an
    // apostrophe and at the end of white space: every branch of GPT-2's pattern meets it.
    let mut text = String::new();
    for c in (0..0x11_0000u32).filter_map(char::from_u32) {
        if c as u32 > 0xFFFF && !(c as u32).is_multiple_of(5) {
            continue;
        }
        text.push_str(&format!("x{c}{c} {c}1{c}'s {c}\n  {c}"));
    }
    for (name, tok) in [("gpt2", gpt2()), ("smollm2", smollm2())] {
        assert_same_ids(name, tok, &text);
    }
}

#[test]
fn long_pieces_merge_as_short_ones_do() {
    let cases = [
        "7".repeat(5000),
        "=".repeat(333) + "-=" + &"+-".repeat(100),
        " ".repeat(1000) + "x" + &"\n".repeat(300) + &"\t \n".repeat(50),
        "abababababaaaabbbbaaaab".repeat(40),
        "Donaudampfschifffahrtsgesellschaftskapitänswitwenpensionsversicherung".repeat(3),
        "日本語のテキストは空白なしで長く続きます".repeat(20),
    ];
    for text in &cases {
        for (name, tok) in all() {
            assert_same_ids(name, tok, text);
        }
    }
}

#[test]
fn added_tokens_are_cut_out_as_the_crate_cuts_them() {
    let tok = gpt2_edited(|json| {
        let added = json["added_tokens"].as_array_mut().unwrap();
        for (i, (content, normalized)) in [("<tool>", false), ("<tool> call", true), ("ol", true)]
            .into_iter()
            .enumerate()
        {
            added.push(
                serde_json::json!({"id": 50257 + i, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": normalized, "special": false}),
            );
        }
    });
    assert_eq!(tok.fast_encoding(), Ok(()));
    let text = "a<|endoftext|>b <tool> call tool<tool><|endoftext|><|endoftext|> cool<|endof";
    assert_same_ids("gpt2 + added tokens", &tok, text);
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 50256).count(), 3);
    // "<tool>" is cut out before "<tool> call" (matched on the raw text first); "ol" was in the
    // vocabulary already, so it keeps that id (349).
    assert_eq!(ids.iter().filter(|&&i| i == 50257).count(), 2, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 349).count(), 2, "{ids:?}");
}

#[test]
fn ignore_merges_takes_whole_pieces_from_the_vocabulary() {
    let tok = gpt2_edited(|json| json["model"]["ignore_merges"] = true.into());
    assert_eq!(tok.fast_encoding(), Ok(()));
    let text = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    assert_same_ids("gpt2 with ignore_merges", &tok, &text[..200_000]);
}

#[test]
fn other_shapes_are_left_to_the_tokenizers_crate() {
    let lowercase =
        gpt2_edited(|json| json["normalizer"] = serde_json::json!({"type": "Lowercase"}));
    let why = lowercase.fast_encoding().unwrap_err();
    assert!(why.contains("normalizer"), "{why}");
    assert_eq!(
        lowercase.encode("Hello World").unwrap(),
        gpt2().encode("hello world").unwrap()
    );
    let prefix = gpt2_edited(|json| json["pre_tokenizer"]["add_prefix_space"] = true.into());
    assert!(prefix.fast_encoding().is_err());
    assert_eq!(
        prefix.encode("Hello").unwrap(),
        gpt2().encode(" Hello").unwrap()
    );
    let stripping = gpt2_edited(|json| json["added_tokens"][0]["lstrip"] = true.into());
    assert!(stripping
        .fast_encoding()
        .unwrap_err()
        .contains("<|endoftext|>"));
}

fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just(" ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("\u{a0}".to_string()),
        Just("\u{3000}".to_string()),
        Just("'".to_string()),
        // Bytes SmolLM2's vocabulary lacks: dropped, so the tokens around them may merge.
        Just("\u{4}".to_string()),
        Just("a\u{1}\u{2}b".to_string()),
        Just("'s".to_string()),
        Just("'ll".to_string()),
        Just("<|endoftext|>".to_string()),
        Just("<|im_start|>".to_string()),
        "[a-zA-Z]{1,8}",
        "[0-9]{1,5}",
        "[!-/:-@]{1,3}",
        "[à-ÿ]{1,3}",
        "[一-龥]{1,3}",
        "[😀-🙏]{1,2}",
        "\\PC{1,3}",
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn same_ids_on_random_text(text in tricky_text()) {
        for (name, tok) in all() {
            prop_assert_eq!(
                tok.encode(&text).unwrap(),
                tok.encode_with_tokenizers_crate(&text).unwrap(),
                "{} on {:?}", name, text
            );
        }
    }
}
