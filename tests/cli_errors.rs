//! `chatforge eval` against transformers, and clear errors (non-zero exit, no panic) for the bad
//! inputs a user meets: missing or truncated weights, shapes that disagree with config.json,
//! unknown model types, a tokenizer that does not fit the model, non-UTF-8 or empty text.

mod common;

use common::*;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn eval(model: &Path, data: &Path) -> (i32, String, String) {
    run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "ppl",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ])
}

fn assert_clean_error((code, _, err): (i32, String, String), needles: &[&str]) {
    assert_ne!(code, 0, "expected a failure");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn eval_ppl_matches_transformers() {
    let (code, out, err) = eval(
        &fixtures().join("gpt2-tiny-eval"),
        &fixtures().join("eval_text.txt"),
    );
    assert_eq!(code, 0, "{err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gpt2-tiny-eval-expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got["tokens"], want["tokens"]);
    for k in ["loss", "bits_per_byte"] {
        let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!((g - w).abs() < 1e-5, "{k}: {g} vs transformers {w}");
    }
}

#[test]
fn bad_text_for_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("gpt2-tiny-eval");
    let bin = tmp.path().join("latin1.txt");
    std::fs::write(&bin, b"na\xefve caf\xe9").unwrap();
    assert_clean_error(eval(&model, &bin), &["latin1.txt", "UTF-8"]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_error(eval(&model, &empty), &["empty.txt", "empty"]);
    assert_clean_error(
        eval(&model, &tmp.path().join("missing.txt")),
        &["missing.txt", "no such file"],
    );
}

#[test]
fn broken_model_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fixtures().join("eval_text.txt");
    let src = fixtures().join("gpt2-tiny-eval");

    let d = tmp.path().join("truncated");
    copy_dir(&src, &d);
    let st = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    assert_clean_error(eval(&d, &text), &["model.safetensors", "truncated"]);

    let d = tmp.path().join("no-weights");
    copy_dir(&src, &d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert_clean_error(eval(&d, &text), &["no-weights", "model.safetensors"]);

    let d = tmp.path().join("wrong-shape");
    copy_dir(&src, &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"n_embd\": 32", "\"n_embd\": 48");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    assert_clean_error(
        eval(&d, &text),
        &["transformer.wte.weight", "shape", "config.json"],
    );

    let d = tmp.path().join("bert");
    copy_dir(&src, &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"model_type\": \"gpt2\"", "\"model_type\": \"bert\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    assert_clean_error(
        eval(&d, &text),
        &["config.json", "model_type 'bert'", "gpt2", "llama"],
    );

    let d = tmp.path().join("bad-json");
    copy_dir(&src, &d);
    std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap();
    assert_clean_error(eval(&d, &text), &["config.json", "malformed JSON"]);

    assert_clean_error(eval(&tmp.path().join("nothing"), &text), &["nothing"]);
}

#[test]
fn tokenizer_that_does_not_fit_the_model() {
    // GPT-2's 50257-token vocabulary next to a model with 320 embeddings.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    copy_dir(&fixtures().join("gpt2-tiny-eval"), &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::fs::copy(
        shared_data().join("gpt2_encoder.json"),
        d.join("vocab.json"),
    )
    .unwrap();
    std::fs::copy(shared_data().join("gpt2_vocab.bpe"), d.join("merges.txt")).unwrap();
    assert_clean_error(
        eval(&d, &fixtures().join("eval_text.txt")),
        &["50257", "320", "vocab"],
    );
}

#[test]
fn convert_writes_a_loadable_copy_and_never_a_partial_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy");
    let (code, _, err) = run(&[
        "convert",
        "--input",
        fixtures().join("gpt2-tiny-eval").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, json, err) = eval(&out, &fixtures().join("eval_text.txt"));
    assert_eq!(code, 0, "{err}");
    assert!(json.contains("bits_per_byte"));
    // A failing conversion leaves the existing output untouched, even with --force.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{\"model_type\": \"t5\"}").unwrap();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    assert_clean_error(
        run(&[
            "convert",
            "--input",
            bad.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--force",
        ]),
        &["t5"],
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn sampling_flags_out_of_range_are_named() {
    let model = fixtures().join("gpt2-tiny-eval");
    for (flag, value) in [
        ("--temperature", "nan"),
        ("--temperature", "-0.5"),
        ("--repetition-penalty", "0"),
        ("--top-p", "1.5"),
        ("--min-p", "inf"),
    ] {
        assert_clean_error(
            run(&[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "Hi",
                &format!("{flag}={value}"),
            ]),
            &[flag],
        );
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let model = fixtures().join("gpt2-tiny-eval");
    let mut child = chatforge_command()
        .args(["bench", "--model", model.to_str().unwrap(), "--json"])
        .args(["--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the result is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("stdout"), "{err}");
}
