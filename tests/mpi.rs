//! Data-parallel pre-training under MPI (`--features mpi`, Open MPI's `mpirun` on the PATH):
//! `mpirun -n 2` gives the weights of one process on the combined batch, rank 0 alone writes the
//! run, and a paused two-process run resumes exactly with two processes (and refuses one); LoRA
//! fine-tuning and DPO (its reference scored in shares) match one process too.
#![cfg(feature = "mpi")]

mod common;

use candle_core::{Device, Tensor};
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STEPS: usize = 6;

/// A tiny model; a step is 2 micro-batches of 4 x 64 tokens (one per rank under `mpirun -n 2`,
/// accumulated by a single process).
fn config() -> Vec<String> {
    vec![
        format!("data.dir={}", shakespeare_shards(100_000).display()),
        "model.n_layer=2".into(),
        "model.n_embd=64".into(),
        "model.n_head=4".into(),
        "train.context=64".into(),
        "train.batch_size=4".into(),
        "train.batch_tokens=512".into(),
        format!("train.max_steps={STEPS}"),
        "train.lr=3e-3".into(),
        "train.warmup_steps=2".into(),
        // Clipping acts on most steps at this norm: it must see the averaged gradient.
        "train.grad_clip=0.5".into(),
        "eval.every=3".into(),
        "eval.tokens=1024".into(),
        "eval.sample_every=0".into(),
        "eval.sample_tokens=8".into(),
        "checkpoint.every=3".into(),
        "checkpoint.keep=5".into(),
    ]
}

fn mpirun() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
        .expect("mpirun on the PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)")
}

/// `chatforge ARGS`, alone (`ranks` 0) or under `mpirun -n ranks`. One thread per process, so both
/// do the same arithmetic in the same order and two ranks fit on a small machine.
fn chatforge(ranks: usize, args: &[String]) -> Output {
    let mut cmd = if ranks == 0 {
        chatforge_command()
    } else {
        let mut c = Command::new(mpirun());
        c.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["-n", &ranks.to_string()])
        .arg(bin());
        c
    };
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "1")
        // Containers often forbid the cross-memory attach that Open MPI's shared memory uses.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd.output().expect("the command runs")
}

fn pretrain(ranks: usize, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pretrain".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in config()
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        args.push("--set".into());
        args.push(s.into());
    }
    chatforge(ranks, &args)
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    err
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The largest absolute difference between two sets of weights, and whether they are bit-identical.
fn compare(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f32, bool) {
    assert_eq!(a.len(), b.len());
    let (mut max, mut same) = (0f32, true);
    for (k, t) in a {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x.len(), y.len(), "{k}");
        for (p, q) in x.iter().zip(&y) {
            max = max.max((p - q).abs());
            same &= p.to_bits() == q.to_bits();
        }
    }
    (max, same)
}

fn state(ckpt: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
        .unwrap()
}

#[test]
fn two_ranks_train_like_one_process_on_the_combined_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (dp, single) = (tmp.path().join("mpi"), tmp.path().join("single"));
    let err = ok(&pretrain(2, &dp, &[]));
    ok(&pretrain(0, &single, &[]));

    // The weights: one process with 2 accumulated micro-batches = 2 ranks with one each.
    let (wa, wb) = (weights(&dp.join("model")), weights(&single.join("model")));
    let (max, same) = compare(&wa, &wb);
    eprintln!(
        "mpirun -n 2 vs one process: max |weight difference| {max:e} (bit-identical: {same})"
    );
    let scale = wb.values().map(max_abs).fold(0f32, f32::max);
    assert!(
        max <= 1e-5 * scale.max(1.0),
        "weights differ by {max} (largest weight {scale})"
    );
    // The same losses, and token counts over both ranks.
    let (la, lb) = (records(&dp, "train"), records(&single, "train"));
    assert_eq!(
        la.len(),
        STEPS,
        "one train record per step (rank 0 alone logs)"
    );
    assert_eq!(lb.len(), STEPS);
    for (a, b) in la.iter().zip(&lb) {
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a["tokens"], b["tokens"]);
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * y.abs(), "loss {x} vs {y}");
        let (x, y) = (
            a["grad_norm"].as_f64().unwrap(),
            b["grad_norm"].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-4 * y.abs(), "grad norm {x} vs {y}");
    }
    assert_eq!(la[STEPS - 1]["tokens"], (STEPS * 512) as u64);
    assert_eq!(
        records(&dp, "val").len(),
        2,
        "validation at steps 3 and 6, once"
    );

    // Rank 0 alone wrote the run: the files of one run, checkpoints whole, nothing half-written.
    let mut names: Vec<String> = std::fs::read_dir(&dp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let events = names
        .iter()
        .filter(|n| n.starts_with("events.out.tfevents."))
        .count();
    assert_eq!(events, 1, "one TensorBoard event file, rank 0's: {names:?}");
    names.retain(|n| !n.starts_with("events.out.tfevents."));
    assert_eq!(
        names,
        [
            ".chatforge-run",
            "checkpoints",
            "config.toml",
            "loss.png",
            "metrics.jsonl",
            "model"
        ]
    );
    let mut ckpts: Vec<String> = std::fs::read_dir(dp.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ckpts.sort();
    assert_eq!(ckpts, ["step_000003", "step_000006"]);
    let s = state(&dp.join("checkpoints/step_000006"));
    assert_eq!(s["world"], 2);
    assert_eq!(
        s["loader_position"], STEPS as u64,
        "one batch per rank per step"
    );
    assert_eq!(s["tokens_seen"], (STEPS * 512) as u64);
    let (m, _) = compare(&weights(&dp.join("checkpoints/step_000006")), &wa);
    assert_eq!(m, 0.0, "the last checkpoint holds the final weights");
    // Rank 0 alone printed the run.
    assert_eq!(err.matches("model: ").count(), 1, "{err}");
    assert_eq!(err.matches("done: ").count(), 1, "{err}");
    assert!(err.contains("x 2 processes"), "{err}");
}

#[test]
fn a_two_rank_run_resumes_exactly_with_two_ranks_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, paused) = (tmp.path().join("straight"), tmp.path().join("paused"));
    ok(&pretrain(2, &straight, &[]));
    ok(&pretrain(2, &paused, &["train.stop_at_step=3"]));
    assert!(!paused.join("model").exists());
    let resume = |ranks| {
        chatforge(
            ranks,
            &[
                "pretrain".into(),
                "--resume".into(),
                paused.display().to_string(),
            ],
        )
    };
    // One process cannot continue a two-process run.
    let o = resume(0);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("2 process(es)") && err.contains("mpirun -n 2"),
        "{err}"
    );
    // Two can, and end where the uninterrupted run ended.
    let err = ok(&resume(2));
    assert_eq!(err.matches("resuming").count(), 1, "{err}");
    let (max, same) = compare(
        &weights(&straight.join("model")),
        &weights(&paused.join("model")),
    );
    assert!(same, "resumed weights differ by up to {max}");
    let (la, lb) = (records(&straight, "train"), records(&paused, "train"));
    assert_eq!(la.len(), STEPS);
    assert_eq!(
        la.iter().map(|r| &r["loss"]).collect::<Vec<_>>(),
        lb.iter().map(|r| &r["loss"]).collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = pretrain(3, &tmp.path().join("run"), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("batch_size * context * processes"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing was written");
}

/// `CMD` (sft or dpo) of `base` on `data` into `out`: 4 steps, LoRA rank 4, each step 2
/// micro-batches of 4 rows of at most 96 tokens (one per rank under `mpirun -n 2`), and `extra`.
fn tune_args(cmd: &str, base: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        cmd,
        "--model",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--context",
        "96",
        "--lora-rank",
        "4",
        "--set",
        "train.batch_tokens=768",
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn lora_fine_tuning_on_two_ranks_matches_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let sft = |ranks, out: &Path| {
        let extra = ["--lora-targets", "q_proj,v_proj", "--merge", "--lr", "1e-2"];
        ok(&chatforge(
            ranks,
            &tune_args("sft", &base, &data, out, &extra),
        ))
    };
    let (dp, single) = (tmp.path().join("mpi"), tmp.path().join("single"));
    let err = sft(2, &dp);
    sft(0, &single);
    assert_eq!(err.matches("done: ").count(), 1, "{err}");
    for dir in ["adapter", "model"] {
        let f = |run: &Path| {
            candle_core::safetensors::load(
                run.join(dir).join(if dir == "model" {
                    "model.safetensors"
                } else {
                    chatforge::formats::peft::ADAPTER_WEIGHTS
                }),
                &Device::Cpu,
            )
            .unwrap()
        };
        let (max, same) = compare(&f(&dp), &f(&single));
        eprintln!("sft {dir}: mpirun -n 2 vs one process: max |difference| {max:e} (bit-identical: {same})");
        assert!(max <= 1e-5, "{dir} differs by {max}");
    }
    assert_eq!(records(&dp, "train").len(), 4);
}

#[test]
fn dpo_on_two_ranks_matches_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, pairs) = chat_base_and_pairs(tmp.path());
    let dpo = |ranks, out: &Path| {
        let extra = ["--lr", "5e-3"];
        ok(&chatforge(
            ranks,
            &tune_args("dpo", &base, &pairs, out, &extra),
        ))
    };
    let (dp, single) = (tmp.path().join("mpi"), tmp.path().join("single"));
    dpo(2, &dp);
    dpo(0, &single);
    // The reference: each rank scored its share, summed; the same as one process's.
    let refs = |run: &Path| -> Vec<f64> {
        let f: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("reference_logps.json")).unwrap(),
        )
        .unwrap();
        let all = f["train"]
            .as_array()
            .unwrap()
            .iter()
            .chain(f["val"].as_array().unwrap());
        all.flat_map(|p| p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (refs(&dp), refs(&single));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3),
        "reference log-probabilities differ"
    );
    let f = |run: &Path| {
        candle_core::safetensors::load(
            run.join("adapter")
                .join(chatforge::formats::peft::ADAPTER_WEIGHTS),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (max, same) = compare(&f(&dp), &f(&single));
    eprintln!(
        "dpo adapter: mpirun -n 2 vs one process: max |difference| {max:e} (bit-identical: {same})"
    );
    assert!(max <= 1e-5, "the adapters differ by {max}");
    let (ra, rb) = (records(&dp, "train"), records(&single, "train"));
    assert_eq!(ra.len(), 4);
    for (x, y) in ra.iter().zip(&rb) {
        for k in ["loss", "rewards/accuracies", "rewards/margins"] {
            let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{k}: {x} vs {y}");
        }
    }
}
