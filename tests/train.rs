//! The pre-training loop: schedules, AdamW, a short run that learns, exact resume, crash-safe
//! checkpoints, and the errors a user can run into.

mod common;

use candle_core::{Device, Tensor, Var};
use chatforge::config::{RunConfig, TrainSection};
use chatforge::train::checkpoint::load_checkpoint;
use chatforge::train::optim::{AdamW, AdamWConfig};
use chatforge::train::schedule::LrSchedule;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// A tiny model that trains in seconds.
fn tiny_config(steps: usize) -> Vec<String> {
    vec![
        format!("data.dir={}", shakespeare_shards(300_000).display()),
        "model.n_layer=2".into(),
        "model.n_embd=64".into(),
        "model.n_head=4".into(),
        "train.context=64".into(),
        "train.batch_size=8".into(),
        format!("train.max_steps={steps}"),
        "train.lr=3e-3".into(),
        "train.warmup_steps=5".into(),
        "eval.every=10".into(),
        "eval.tokens=4096".into(),
        "eval.sample_every=0".into(),
        "eval.sample_tokens=16".into(),
        "checkpoint.every=10".into(),
        "checkpoint.keep=3".into(),
    ]
}

fn chatforge_pretrain(
    out: &Path,
    set: &[String],
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = chatforge_command();
    cmd.arg("pretrain").arg("--out").arg(out);
    for s in set {
        cmd.arg("--set").arg(s);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
}

fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    chatforge::train::metrics::read_records(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn schedules_give_known_values() {
    let t = |schedule: &str| TrainSection {
        lr: 1.0,
        warmup_steps: 10,
        min_lr_ratio: 0.1,
        schedule: schedule.parse().unwrap(),
        decay_fraction: 0.2,
        ..Default::default()
    };
    let cos = LrSchedule::from_config(&t("cosine"), 110);
    assert!((cos.lr(0) - 0.1).abs() < 1e-12);
    assert!((cos.lr(9) - 1.0).abs() < 1e-12);
    assert!((cos.lr(10) - 1.0).abs() < 1e-12);
    assert!((cos.lr(60) - 0.55).abs() < 1e-12, "{}", cos.lr(60));
    assert!((cos.lr(110) - 0.1).abs() < 1e-12);
    let wsd = LrSchedule::from_config(&t("wsd"), 110);
    assert_eq!(wsd.lr(50), 1.0);
    assert_eq!(wsd.lr(87), 1.0);
    assert!(
        (wsd.lr(88) - (1.0 - 0.9 / 22.0)).abs() < 1e-12,
        "{}",
        wsd.lr(88)
    );
    assert!((wsd.lr(109) - 0.1).abs() < 1e-12);
    let c = LrSchedule::from_config(&t("constant"), 110);
    assert!((c.lr(4) - 0.5).abs() < 1e-12);
    assert_eq!(c.lr(100), 1.0);
}

#[test]
fn adamw_step_matches_hand_computation() {
    let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.999, 1e-8, 0.01);
    let mut params = BTreeMap::new();
    params.insert(
        "h.0.attn.qkv.weight".to_string(),
        Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap(),
    );
    params.insert(
        "h.0.ln_1.weight".to_string(),
        Var::new(&[0.5f32, 3.0], &Device::Cpu).unwrap(),
    );
    let mut opt = AdamW::new(
        AdamWConfig {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        },
        &params,
    )
    .unwrap();
    let steps = [[0.5f64, -1.0], [0.1, 0.3]];
    // Hand computation in f64, as torch.optim.AdamW.
    let mut want: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    want.insert("h.0.attn.qkv.weight", vec![1.0, -2.0]);
    want.insert("h.0.ln_1.weight", vec![0.5, 3.0]);
    let mut m = [[0.0f64; 2]; 2];
    let mut v = [[0.0f64; 2]; 2];
    for (t, g) in steps.iter().enumerate() {
        let grads: BTreeMap<String, Tensor> = params
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap(),
                )
            })
            .collect();
        opt.step(&params, &grads, lr, 1.0).unwrap();
        for (pi, (name, p)) in want.iter_mut().enumerate() {
            let decay = if name.contains("ln_") { 0.0 } else { wd };
            for i in 0..2 {
                p[i] *= 1.0 - lr * decay;
                m[pi][i] = b1 * m[pi][i] + (1.0 - b1) * g[i];
                v[pi][i] = b2 * v[pi][i] + (1.0 - b2) * g[i] * g[i];
                let mhat = m[pi][i] / (1.0 - b1.powi(t as i32 + 1));
                let vhat = v[pi][i] / (1.0 - b2.powi(t as i32 + 1));
                p[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
    }
    for (name, w) in &want {
        let got: Vec<f32> = params[*name].as_tensor().to_vec1().unwrap();
        for (g, w) in got.iter().zip(w) {
            assert!((*g as f64 - w).abs() < 1e-6, "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn grad_norm_sums_every_tensor_on_either_path() {
    // f32 on the CPU takes the fused pass; bf16 the device path (summed on the device, read once).
    let mut grads = BTreeMap::new();
    let a: Vec<f32> = (0..5000).map(|i| ((i % 7) as f32 - 3.0) * 0.5).collect();
    let want_a: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
    grads.insert(
        "a".to_string(),
        Tensor::from_vec(a, (50, 100), &Device::Cpu).unwrap(),
    );
    let b = Tensor::new(&[[3f32, 4.0], [12.0, 0.0]], &Device::Cpu).unwrap();
    grads.insert(
        "b".to_string(),
        b.to_dtype(candle_core::DType::BF16).unwrap(),
    );
    grads.insert(
        "c".to_string(),
        Tensor::new(&[2f32], &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::BF16)
            .unwrap(),
    );
    let n = chatforge::train::optim::grad_norm(&grads).unwrap();
    let want = (want_a + 9.0 + 16.0 + 144.0 + 4.0).sqrt();
    assert!((n - want).abs() < 1e-9 * want, "{n} vs {want}");
}

#[test]
fn a_short_run_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RunConfig::load(None, &tiny_config(150)).unwrap();
    let s = chatforge::train::pretrain(cfg, &tmp.path().join("run")).unwrap();
    let init = (512f64).ln();
    let val = s.val_loss.unwrap();
    eprintln!(
        "first loss {:.3}, final val loss {val:.3}, {:.0} tok/s",
        s.first_loss, s.tokens_per_sec
    );
    assert!(
        (s.first_loss - init).abs() < 0.3,
        "first loss {} should be near ln(512)",
        s.first_loss
    );
    assert!(
        val < init - 1.5,
        "val loss {val} did not fall well below {init}"
    );
    let run = tmp.path().join("run");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "loss.png",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(s.val_bpb.unwrap() > 0.0);
}

#[test]
fn resume_continues_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let set = tiny_config(20);
    let out = chatforge_pretrain(&a, &set, &[])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut first = set.clone();
    first.push("train.stop_at_step=10".into());
    let out = chatforge_pretrain(&b, &first, &[])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !b.join("model").exists(),
        "a paused run has no final model yet"
    );
    let (code, _, err) = run(&["pretrain", "--resume", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (la, lb) = (train_losses(&a), train_losses(&b));
    assert_eq!(la.len(), 20);
    assert_eq!(
        la, lb,
        "losses differ between the straight and the resumed run"
    );
    let wa =
        candle_core::safetensors::load(a.join("model/model.safetensors"), &Device::Cpu).unwrap();
    let wb =
        candle_core::safetensors::load(b.join("model/model.safetensors"), &Device::Cpu).unwrap();
    for (k, t) in &wa {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = wb[k].flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{k} differs"
        );
    }
}

#[test]
fn a_crash_during_a_checkpoint_write_leaves_the_previous_one_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let mut set = tiny_config(20);
    set.push("checkpoint.every=5".into());
    // Pause halfway through writing the step-10 checkpoint, then kill the process there.
    let mut child = chatforge_pretrain(
        &run_dir,
        &set,
        &[("CHATFORGE_TEST_CHECKPOINT_PAUSE", "10:60000")],
    );
    let ckpts = run_dir.join("checkpoints");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let partial = std::fs::read_dir(&ckpts)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(".step_000010.tmp") && e.path().join("model.safetensors").exists()
            });
        if partial {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step-10 checkpoint write never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ckpts.join("step_000010").exists());
    let last = load_checkpoint(&ckpts.join("step_000005"), &Device::Cpu).unwrap();
    assert_eq!(last.state.step, 5);
    assert_eq!(last.state.loader_position, 5);
    // And the run resumes from it.
    let (code, _, err) = run(&["pretrain", "--resume", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("from step 5"), "{err}");
    assert!(ckpts.join("step_000020").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial checkpoint directories were not cleaned up"
    );
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let mut set = tiny_config(10);
    set.extend([
        "train.lr=10".to_string(),
        "train.grad_clip=0".into(),
        "train.warmup_steps=0".into(),
        "checkpoint.every=1".into(),
        "checkpoint.keep=1".into(),
    ]);
    let out = chatforge_pretrain(&run_dir, &set, &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the loss is"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // What is left for --resume holds finite weights whose loss is below the blow-up bound (the
    // checkpoint right before the trip gave the blown-up loss and was set aside).
    for ckpt in chatforge::train::checkpoint::list_checkpoints(&run_dir).unwrap() {
        assert!(err.contains(&*ckpt.display().to_string()), "{err}");
        load_checkpoint(&ckpt, &Device::Cpu).unwrap();
        let text = tmp.path().join("text.txt");
        let all = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
        std::fs::write(&text, &all[..4000]).unwrap();
        let (code, json, e) = run(&[
            "eval",
            "--model",
            ckpt.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{e}");
        let loss = serde_json::from_str::<serde_json::Value>(&json).unwrap()["loss"]
            .as_f64()
            .unwrap();
        assert!(
            loss < 4.0 * 512f64.ln(),
            "{} gives loss {loss}",
            ckpt.display()
        );
    }
    // And --resume continues (from that checkpoint, or from step 0 when none was sound).
    let (code, _, e) = run(&[
        "pretrain",
        "--resume",
        run_dir.to_str().unwrap(),
        "--set",
        "train.lr=1e-3",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(run_dir.join("model/model.safetensors").exists());
}

#[test]
fn config_mistakes_are_named() {
    let e = RunConfig::load(None, &["train.lrr=1".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("train.lrr") && e.contains("lr") && e.contains("warmup_steps"),
        "{e}"
    );
    let e = RunConfig::load(None, &["optim.lr=1".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("optim") && e.contains("train"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("run.toml");
    std::fs::write(&toml, "[train]\nlearning_rate = 0.1\n").unwrap();
    let e = RunConfig::load(Some(&toml), &[]).err().unwrap().to_string();
    assert!(e.contains("learning_rate") && e.contains("run.toml"), "{e}");
    let e = RunConfig::load(None, &["train.schedule=linear".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cosine"), "{e}");
    let cfg = RunConfig::load(None, &["train.lr=1".into(), "model.preset=gpt2".into()]).unwrap();
    assert_eq!(cfg.train.lr, 1.0);
    assert_eq!(cfg.model.preset, "gpt2");
    // Every number has a range, named with the key.
    for (set, range) in [
        ("train.eps=-1e-8", "(0, 1]"),
        ("train.grad_clip=-1", "[0, 1000000]"),
        ("train.weight_decay=-0.1", "[0, 10]"),
        ("train.lr=inf", "(0, 10]"),
        ("train.lr=nan", "(0, 10]"),
        ("train.beta2=1", "[0, 1)"),
        ("eval.sample_temperature=-1", "[0, 100]"),
        ("train.context=2000000000", "1048576"),
    ] {
        let e = RunConfig::load(None, &[set.into()])
            .err()
            .unwrap()
            .to_string();
        let key = set.split('=').next().unwrap();
        assert!(e.contains(key) && e.contains(range), "{set}: {e}");
    }
}

#[test]
fn out_of_vocabulary_shard_ids_name_the_shard_before_training() {
    use chatforge::data::shard::{write_shard, TokenWidth};
    let tmp = tempfile::tempdir().unwrap();
    for split in ["val", "train"] {
        let data = tmp.path().join(format!("data-{split}"));
        std::fs::create_dir_all(&data).unwrap();
        for e in std::fs::read_dir(shakespeare_shards(300_000))
            .unwrap()
            .flatten()
        {
            std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
        }
        let shard = data.join(format!("{split}_000000.bin"));
        // Every window of a batch meets one.
        let ids: Vec<u32> = (0..5000)
            .map(|i| if i % 50 == 49 { 60_000 } else { i % 500 })
            .collect();
        write_shard(&shard, &ids, TokenWidth::U16).unwrap();
        let mut set = tiny_config(5);
        set[0] = format!("data.dir={}", data.display());
        let out = chatforge_pretrain(&tmp.path().join(format!("run-{split}")), &set, &[])
            .wait_with_output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("{split}_000000.bin")) && err.contains("60000"),
            "{err}"
        );
        if split == "val" {
            assert!(
                !err.contains("step 1"),
                "the validation shard is checked first: {err}"
            );
        }
    }
    // Shards without their meta.json: the message says it is missing.
    let data = tmp.path().join("no-meta");
    std::fs::create_dir_all(&data).unwrap();
    for e in std::fs::read_dir(shakespeare_shards(300_000))
        .unwrap()
        .flatten()
    {
        if e.file_name() != "meta.json" {
            std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
        }
    }
    let mut set = tiny_config(5);
    set[0] = format!("data.dir={}", data.display());
    let out = chatforge_pretrain(&tmp.path().join("run-meta"), &set, &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("meta.json is missing"), "{err}");
}

#[test]
fn a_loss_plot_that_cannot_be_written_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let mut set = tiny_config(10);
    set.push("train.stop_at_step=5".into());
    let out = chatforge_pretrain(&run_dir, &set, &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success());
    // A directory where the plot goes: the write fails, the run does not.
    std::fs::remove_file(run_dir.join("loss.png")).ok();
    std::fs::create_dir_all(run_dir.join("loss.png/x")).unwrap();
    let (code, _, err) = run(&["pretrain", "--resume", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: the loss plot was not written"),
        "{err}"
    );
    assert!(run_dir.join("model/model.safetensors").exists());
}

#[test]
fn cli_errors_for_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // Data tokenized with 512 tokens cannot train a model with 128.
    let mut set = tiny_config(2);
    set.push(format!(
        "model.init_from={}",
        fixtures().join("gpt2-tiny").display()
    ));
    set.push("train.context=16".into());
    let out = chatforge_pretrain(&tmp.path().join("a"), &set, &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("vocabulary of 512") && err.contains("128"),
        "{err}"
    );
    // --resume of something that is not a checkpoint.
    let (code, _, err) = run(&["pretrain", "--resume", tmp.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a checkpoint"), "{err}");
    // An existing run is not overwritten.
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    std::fs::write(tmp.path().join("b/config.toml"), "precious").unwrap();
    let out = chatforge_pretrain(&tmp.path().join("b"), &tiny_config(2), &[])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("b/config.toml")).unwrap(),
        "precious"
    );
    // A data directory that does not exist.
    let (code, _, err) = run(&[
        "pretrain",
        "--out",
        tmp.path().join("c").to_str().unwrap(),
        "--set",
        "data.dir=/nonexistent/data",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent/data") && err.contains("data prepare"),
        "{err}"
    );
}

#[test]
fn bf16_mixed_precision_follows_the_f32_loss_curve() {
    // bf16 takes the portable formulation in `ops`, the formulations GPUs run (the fused CPU kernels are f32);
    // the same run in both precisions must give nearly the same losses, step by step.
    let tmp = tempfile::tempdir().unwrap();
    let mut curves = Vec::new();
    for dtype in ["f32", "bf16"] {
        let mut set = tiny_config(12);
        set.push(format!("train.dtype={dtype}"));
        let cfg = RunConfig::load(None, &set).unwrap();
        let run = tmp.path().join(dtype);
        chatforge::train::pretrain(cfg, &run).unwrap();
        curves.push(train_losses(&run));
    }
    assert_eq!(curves[0].len(), 12);
    for ((step, a), (_, b)) in curves[0].iter().zip(&curves[1]) {
        let rel = (a - b).abs() / a;
        assert!(rel < 0.02, "step {step}: f32 loss {a}, bf16 {b}");
    }
    // And the two are not the same computation.
    assert!(
        curves[0] != curves[1],
        "bf16 gave bit-identical losses: it did not run in bf16"
    );
}

#[test]
fn profile_reports_where_the_step_time_went() {
    let tmp = tempfile::tempdir().unwrap();
    let mut set = tiny_config(3);
    set.push("train.profile=true".into());
    let out = chatforge_pretrain(&tmp.path().join("run"), &set, &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("profile over 3 steps"), "{err}");
    let mut share = 0.0;
    for phase in ["data", "forward", "backward", "grad norm", "optimizer"] {
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with(phase))
            .unwrap_or_else(|| panic!("no '{phase}' line in:\n{err}"));
        let pct: f64 = line
            .trim_end_matches('%')
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        share += pct;
    }
    assert!(
        (share - 100.0).abs() < 0.5,
        "the phases' shares add up to {share}%:\n{err}"
    );
    // A single process has no all-reduce; without the key nothing is printed.
    assert!(!err.contains("all-reduce"), "{err}");
    let plain = chatforge_pretrain(&tmp.path().join("plain"), &tiny_config(1), &[])
        .wait_with_output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("profile over"));
}
