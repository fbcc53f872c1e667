//! `kill -9` at any instant loses at most the steps since the last checkpoint: 50 kills of
//! `pretrain` (at random moments, in the middle of checkpoint writes, and in the middle of prunes),
//! each followed by `--resume`, leave only checkpoints that load completely (anything partial is
//! ignored), and the run ends with weights bit-identical to an uninterrupted one. Also: a run
//! killed before its first checkpoint continues with `--resume`.

mod common;

use candle_core::Device;
use chatforge::train::checkpoint::{list_checkpoints, load_checkpoint};
use common::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(steps: usize) -> Vec<String> {
    vec![
        format!("data.dir={}", shakespeare_shards(300_000).display()),
        "model.n_layer=2".into(),
        "model.n_embd=32".into(),
        "model.n_head=4".into(),
        "train.context=32".into(),
        "train.batch_size=4".into(),
        format!("train.max_steps={steps}"),
        "train.lr=3e-3".into(),
        "train.warmup_steps=5".into(),
        "eval.every=0".into(),
        "eval.tokens=1024".into(),
        "eval.sample_every=0".into(),
        "eval.sample_tokens=8".into(),
        "checkpoint.every=1".into(),
        "checkpoint.keep=2".into(),
    ]
}

fn pretrain(run: &Path, set: &[String]) -> Child {
    let mut cmd = chatforge_command();
    if run.join("config.toml").exists() {
        cmd.args(["pretrain", "--resume"]).arg(run);
    } else {
        cmd.args(["pretrain", "--out"]).arg(run);
        for s in set {
            cmd.arg("--set").arg(s);
        }
    }
    // Prunes take long enough to be caught in the middle.
    cmd.env("CHATFORGE_TEST_PRUNE_PAUSE", "25")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Hidden directories in `checkpoints/` whose name contains `marker` (".tmp-": a write in
/// progress, ".old-": a prune in progress).
fn hidden_with(run: &Path, marker: &str) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.') && n.contains(marker)
        })
}

fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let mut w: Vec<_> = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let bits = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, bits.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn fifty_kills_leave_loadable_checkpoints_and_the_same_final_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 400;
    let straight = tmp.path().join("straight");
    let status = pretrain(&straight, &config(steps)).wait().unwrap();
    assert!(status.success());

    let run = tmp.path().join("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut in_write, mut in_prune, mut kills) = (0, 0, 0);
    for kill in 0..50 {
        let mut child = pretrain(&run, &config(steps));
        let t0 = Instant::now();
        // A third of the kills at a random moment, a third during a checkpoint write, a third
        // during a prune.
        let marker = [None, Some(".tmp-"), Some(".old-")][kill % 3];
        let random_delay = Duration::from_millis(rng.random_range(20..600));
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let due = match marker {
                None => t0.elapsed() >= random_delay,
                Some(m) => hidden_with(&run, m) || t0.elapsed() > Duration::from_secs(10),
            };
            if due {
                in_write += usize::from(hidden_with(&run, ".tmp-"));
                in_prune += usize::from(hidden_with(&run, ".old-"));
                let _ = child.kill();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.wait().unwrap();
        // Every checkpoint the loader would consider loads completely.
        for c in list_checkpoints(&run).unwrap() {
            load_checkpoint(&c, &Device::Cpu).unwrap_or_else(|e| {
                panic!("after kill {kill}: {} does not load: {e}", c.display())
            });
        }
        if run.join("model").exists() {
            break;
        }
    }
    eprintln!(
        "{kills} kills, {in_write} of them in a checkpoint write, {in_prune} in a prune; {} of {steps} steps done before the last resume",
        list_checkpoints(&run).unwrap().last().map_or(0, |c| load_checkpoint(c, &Device::Cpu).unwrap().state.step)
    );
    assert_eq!(kills, 50, "the run ended before 50 kills");
    assert!(
        in_write > 0 && in_prune > 0,
        "the kills missed writes or prunes"
    );
    if !run.join("model").exists() {
        let status = pretrain(&run, &config(steps)).wait().unwrap();
        assert!(status.success());
    }
    assert_eq!(
        weights(&straight.join("model")),
        weights(&run.join("model")),
        "the final weights differ from the uninterrupted run's"
    );
}

#[test]
fn a_run_killed_before_its_first_checkpoint_continues_with_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut set = config(12);
    set.push("checkpoint.every=0".into());
    // Stopped in the first step: config.toml is written, no checkpoint yet.
    let mut child = pretrain(&run, &set);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.join("config.toml").exists() {
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(list_checkpoints(&run).unwrap().is_empty());
    let (code, _, err) = run_cli(&run);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no checkpoint yet"), "{err}");
    assert!(run.join("model/model.safetensors").exists());
}

fn run_cli(run_dir: &Path) -> (i32, String, String) {
    run(&["pretrain", "--resume", run_dir.to_str().unwrap()])
}

fn signal(child: &Child, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
}

/// Waits until `run` has a checkpoint at least `step` far.
fn wait_for_checkpoint(run: &Path, step: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = list_checkpoints(run).unwrap().last().map(|c| {
            let n = c.file_name().unwrap().to_string_lossy().into_owned();
            n.trim_start_matches("step_").parse::<usize>().unwrap()
        });
        if last.is_some_and(|s| s >= step) {
            return;
        }
        assert!(Instant::now() < deadline, "no checkpoint of step {step}");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_checkpoints_and_says_how_to_resume_and_a_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut set = config(300);
    set.push("checkpoint.every=50".into());
    let straight = tmp.path().join("straight");
    assert!(pretrain(&straight, &set).wait().unwrap().success());

    // SIGTERM between checkpoints: the step finishes, a checkpoint is written at it, and the run
    // continues from there to the same weights.
    let run_dir = tmp.path().join("run");
    let mut child = chatforge_command()
        .args(["pretrain", "--out"])
        .arg(&run_dir)
        .args(set.iter().flat_map(|s| ["--set", s.as_str()]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&run_dir, 50, &mut child);
    std::thread::sleep(Duration::from_millis(30));
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{err}");
    assert!(
        err.contains("stopped by SIGTERM") && err.contains("--resume"),
        "{err}"
    );
    let last = list_checkpoints(&run_dir).unwrap().pop().unwrap();
    let step = load_checkpoint(&last, &Device::Cpu).unwrap().state.step;
    assert!(step > 50 && step < 300, "checkpoint at step {step}");
    let (code, _, e) = run(&["pretrain", "--resume", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(
        weights(&straight.join("model")),
        weights(&run_dir.join("model"))
    );

    // Two SIGINTs: the first asks for a checkpoint (held up here by the test's pause), the
    // second ends the process at once; the checkpoint before stays whole.
    let run_dir = tmp.path().join("twice");
    let mut child = chatforge_command()
        .args(["pretrain", "--out"])
        .arg(&run_dir)
        .args(set.iter().flat_map(|s| ["--set", s.as_str()]))
        .env("CHATFORGE_TEST_CHECKPOINT_PAUSE", "100:60000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&run_dir, 50, &mut child);
    while child.try_wait().unwrap().is_none() && !hidden_with(&run_dir, ".tmp-") {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = Instant::now();
    signal(&child, "INT");
    // Long enough for the first signal to be delivered on a busy machine (two pending SIGINTs
    // would merge into one).
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the checkpoint"
    );
    signal(&child, "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 2));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    for c in list_checkpoints(&run_dir).unwrap() {
        load_checkpoint(&c, &Device::Cpu).unwrap();
    }
}
