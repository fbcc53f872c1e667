//! `chatforge speedrun` end to end on a small corpus with a small budget (its RL stage too), and
//! its offline error.

mod common;

use common::*;

#[test]
fn speedrun_runs_the_pipeline_and_writes_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, &text[..200_000]).unwrap();
    let out = tmp.path().join("run");
    let (code, stdout, err) = run(&[
        "speedrun",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--vocab-size",
        "400",
        "--set",
        "train.max_steps=30",
        "--set",
        "model.n_layer=2",
        "--set",
        "model.n_embd=64",
        "--set",
        "model.n_head=4",
        "--set",
        "train.context=64",
        "--set",
        "eval.every=15",
        "--set",
        "eval.tokens=2048",
        "--sft-steps",
        "12",
        "--sft-train-per-task",
        "40",
        "--sft-test-per-task",
        "4",
        "--sft-set",
        "train.batch_size=8",
        "--rl-steps",
        "2",
        "--rl-set",
        "rl.group=4",
        "--rl-set",
        "rl.prompts_per_step=2",
        "--rl-set",
        "rl.max_new_tokens=8",
        "--rl-set",
        "rl.train_problems=40",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("report.md"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "validation bits per byte",
        "tokens/s",
        "loss curve",
        "Sample 1",
        "[train]",
        "## Report card",
        "| arithmetic |",
        "| spelling |",
        "| count_letters |",
        "supervised fine-tuning | 12 steps",
        "reinforcement learning (GRPO) | 2 steps, held-out pass@1",
        "| task | base model | after SFT | after RL |",
    ] {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
    for f in [
        "tokenizer/tokenizer.json",
        "data/meta.json",
        "pretrain/model/model.safetensors",
        "pretrain/loss.png",
        "sft-data/train.jsonl",
        "sft-data/test_spelling.jsonl",
        "sft/model/model.safetensors",
        "rl/model/model.safetensors",
        "rl/reward.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The fine-tuned model's card carries its held-out exact-match scores.
    let card = std::fs::read_to_string(out.join("sft/model/README.md")).unwrap();
    for task in ["spelling", "arithmetic", "count_letters"] {
        let line = format!("      name: \"{task} exact match\"");
        assert!(
            card.lines().any(|l| l == line),
            "no {task} score in:\n{card}"
        );
    }
    // The speedrun refuses to overwrite a finished run.
    let (code, _, err) = run(&[
        "speedrun",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn speedrun_without_network_or_corpus_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = chatforge_command()
        .args([
            "speedrun",
            "--out",
            tmp.path().join("run").to_str().unwrap(),
        ])
        .env("CHATFORGE_CACHE", tmp.path().join("cache"))
        // Port 9 (discard) on loopback: refused at once, as an offline machine would.
        .env(
            "CHATFORGE_TINY_SHAKESPEARE_URL",
            "http://127.0.0.1:9/input.txt",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--corpus") && err.contains("could not download"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
