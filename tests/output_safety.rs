//! Nothing the user had is lost: every command that writes a directory refuses a destination that
//! exists and holds something (unless --force), one that equals or contains an input, and one that
//! contains the working directory; with --force only the destination itself is replaced.

mod common;

use common::*;
use std::path::Path;

fn run_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = chatforge_command()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("chatforge runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn corpus_in(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &text[..200_000]).unwrap();
    p
}

fn refused((code, err): (i32, String), needle: &str) {
    assert_ne!(code, 0, "expected a refusal");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "error should say {needle:?}: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
}

#[test]
fn tokenizer_train_never_deletes_its_input_or_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let tt = tmp.path().join("tt");
    let corpus = corpus_in(&tt);
    let c = corpus.to_str().unwrap();
    // --out is the folder holding the corpus: refused even with --force.
    for force in [false, true] {
        let mut args = vec!["tokenizer", "train", "--input", c, "--vocab-size", "300"];
        args.extend(["--out", tt.to_str().unwrap()]);
        if force {
            args.push("--force");
        }
        refused(run_in(tmp.path(), &args), "contains the input");
        assert!(corpus.exists(), "the corpus was deleted");
    }
    // --out .. from inside a folder: it holds the working directory.
    let inner = tmp.path().join("work/inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("keep.txt"), "mine").unwrap();
    let args = [
        "tokenizer",
        "train",
        "--input",
        c,
        "--vocab-size",
        "300",
        "--out",
        "..",
        "--force",
    ];
    refused(run_in(&inner, &args), "working directory");
    assert_eq!(
        std::fs::read_to_string(inner.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn an_existing_output_is_refused_and_force_replaces_only_it() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus_in(&tmp.path().join("in"));
    let out = tmp.path().join("tok");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(tmp.path().join("beside.txt"), "mine too").unwrap();
    let args = |force: bool| {
        let mut a = vec![
            "tokenizer".to_string(),
            "train".into(),
            "--input".into(),
            corpus.to_str().unwrap().into(),
            "--vocab-size".into(),
            "300".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let (code, _, err) = run(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    refused((code, err), "--force");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );

    let (code, _, err) = run(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(out.join("tokenizer.json").exists());
    assert!(
        !out.join("notes.txt").exists(),
        "--force replaces the directory"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("beside.txt")).unwrap(),
        "mine too"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary siblings left: {leftovers:?}"
    );
}

#[test]
fn convert_import_prepare_and_synthetic_follow_the_same_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("gpt2-tiny-eval");
    let taken = tmp.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    let t = taken.to_str().unwrap();

    let (code, _, err) = run(&["convert", "--input", model.to_str().unwrap(), "--output", t]);
    refused((code, err), "--force");
    // The input's own directory as the output.
    let (code, _, err) = run(&[
        "convert",
        "--input",
        model.to_str().unwrap(),
        "--output",
        model.to_str().unwrap(),
        "--force",
    ]);
    refused((code, err), "also an input");
    assert!(model.join("model.safetensors").exists());

    let vocab = shared_data().join("gpt2_encoder.json");
    let merges = shared_data().join("gpt2_vocab.bpe");
    let (code, _, err) = run(&[
        "tokenizer",
        "import-gpt2",
        "--vocab",
        vocab.to_str().unwrap(),
        "--merges",
        merges.to_str().unwrap(),
        "--out",
        t,
    ]);
    refused((code, err), "--force");

    let synthetic = |extra: &[&str]| {
        let mut args = vec![
            "data",
            "synthetic",
            "--out",
            t,
            "--train",
            "5",
            "--test",
            "2",
        ];
        args.extend(extra);
        run(&args)
    };
    let (code, _, err) = synthetic(&[]);
    refused((code, err), "--force");

    let corpus = corpus_in(&tmp.path().join("c"));
    let (code, _, err) = run(&[
        "data",
        "prepare",
        "--tokenizer",
        model.to_str().unwrap(),
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        tmp.path().join("c").to_str().unwrap(),
        "--force",
    ]);
    refused((code, err), "contains the input");
    assert!(corpus.exists());
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );

    // With --force, the synthetic tasks replace the directory.
    let (code, _, err) = synthetic(&["--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(taken.join("train.jsonl").exists() && !taken.join("keep.txt").exists());
}
