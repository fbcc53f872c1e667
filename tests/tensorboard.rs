//! The TensorBoard event files a run writes beside metrics.jsonl: every record framed and
//! checksummed as TFRecord (each CRC-32C checked here), the scalars equal to metrics.jsonl's
//! values, samples as text, and a resumed run's file starting with the SessionLog that makes
//! TensorBoard drop the steps the interrupted run had logged after its checkpoint; the files'
//! names sort in the order they were written.
//! (The Python `tensorboard` package reading the same files: tools/check_tensorboard.py.)

mod common;

use chatforge::train::tensorboard::masked_crc;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn config(steps: usize) -> Vec<String> {
    [
        format!("data.dir={}", shakespeare_shards(300_000).display()),
        "model.n_layer=1".into(),
        "model.n_embd=32".into(),
        "model.n_head=2".into(),
        "train.context=32".into(),
        "train.batch_size=4".into(),
        format!("train.max_steps={steps}"),
        "eval.every=5".into(),
        "eval.tokens=1024".into(),
        "eval.sample_every=10".into(),
        "eval.sample_tokens=8".into(),
        "checkpoint.every=5".into(),
        "checkpoint.keep=3".into(),
    ]
    .into_iter()
    .collect()
}

fn pretrain(args: &[&str], set: &[String]) {
    let mut cmd = chatforge_command();
    cmd.arg("pretrain").args(args);
    for s in set {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run killed while it writes its step-10 checkpoint: steps 6 to 10 are logged, but the run
/// resumes from step 5.
fn pretrain_killed_at_the_second_checkpoint(run: &Path, set: &[String]) {
    let mut cmd = chatforge_command();
    cmd.arg("pretrain").arg("--out").arg(run);
    for s in set {
        cmd.arg("--set").arg(s);
    }
    cmd.env("CHATFORGE_TEST_CHECKPOINT_PAUSE", "10:60000")
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ckpts = run.join("checkpoints");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_dir(&ckpts)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".step_000010.tmp")
                && e.path().join("model.safetensors").exists()
        })
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no step-10 checkpoint"
        );
        assert!(child.try_wait().unwrap().is_none(), "training ended first");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The event files of a run, oldest first.
fn event_files(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    v.sort();
    v
}

/// The records of a TFRecord file, every length and payload CRC checked.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let (mut out, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc(len_bytes), "length CRC at {at}");
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc(data), "data CRC at {at}");
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

/// A protocol buffer's fields: (field number, varint or fixed value, or bytes).
enum Field {
    Int(u64),
    Bytes(Vec<u8>),
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut x, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        x |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return x;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < b.len() {
        let key = varint(b, &mut at);
        let f = match key & 7 {
            0 => Field::Int(varint(b, &mut at)),
            1 => {
                at += 8;
                Field::Int(u64::from_le_bytes(b[at - 8..at].try_into().unwrap()))
            }
            5 => {
                at += 4;
                Field::Int(u64::from(u32::from_le_bytes(
                    b[at - 4..at].try_into().unwrap(),
                )))
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                Field::Bytes(b[at - n..at].to_vec())
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, f));
    }
    out
}

fn bytes_of(fs: &[(u64, Field)], n: u64) -> Option<&[u8]> {
    fs.iter().find_map(|(k, f)| match f {
        Field::Bytes(b) if *k == n => Some(b.as_slice()),
        _ => None,
    })
}

fn int_of(fs: &[(u64, Field)], n: u64) -> Option<u64> {
    fs.iter().find_map(|(k, f)| match f {
        Field::Int(x) if *k == n => Some(*x),
        _ => None,
    })
}

/// What one event file holds: its version string, SessionLog statuses (step, status), scalars
/// ((tag, step) -> value) and texts ((tag, step) -> text).
#[derive(Default)]
struct Events {
    version: Option<String>,
    session_logs: Vec<(u64, u64)>,
    scalars: BTreeMap<(String, u64), f32>,
    texts: BTreeMap<(String, u64), String>,
}

fn read_events(path: &Path) -> Events {
    let mut ev = Events::default();
    for r in records(path) {
        let e = fields(&r);
        let step = int_of(&e, 2).unwrap_or(0);
        assert!(
            int_of(&e, 1).is_some_and(|w| f64::from_bits(w) > 1.7e9),
            "wall_time"
        );
        if let Some(v) = bytes_of(&e, 3) {
            ev.version = Some(String::from_utf8(v.to_vec()).unwrap());
        }
        if let Some(log) = bytes_of(&e, 7) {
            ev.session_logs
                .push((step, int_of(&fields(log), 1).unwrap()));
        }
        let Some(summary) = bytes_of(&e, 5) else {
            continue;
        };
        for (_, value) in fields(summary) {
            let Field::Bytes(value) = value else { panic!() };
            let v = fields(&value);
            let tag = String::from_utf8(bytes_of(&v, 1).unwrap().to_vec()).unwrap();
            if let Some(x) = int_of(&v, 2) {
                ev.scalars.insert((tag, step), f32::from_bits(x as u32));
            } else {
                let meta = fields(bytes_of(&v, 9).unwrap());
                let plugin = fields(bytes_of(&meta, 1).unwrap());
                assert_eq!(bytes_of(&plugin, 1), Some(&b"text"[..]));
                let tensor = fields(bytes_of(&v, 8).unwrap());
                assert_eq!(int_of(&tensor, 1), Some(7), "DT_STRING");
                let text = String::from_utf8(bytes_of(&tensor, 8).unwrap().to_vec()).unwrap();
                ev.texts.insert((tag, step), text);
            }
        }
    }
    ev
}

#[test]
fn every_metric_is_a_checksummed_tensorboard_event_and_resume_purges_the_lost_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    pretrain_killed_at_the_second_checkpoint(&run, &config(12));
    pretrain(&["--resume", run.to_str().unwrap()], &[]);

    let files = event_files(&run);
    assert_eq!(files.len(), 2, "one file per process: {files:?}");
    let secs = |p: &PathBuf| -> u64 {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.split('.').nth(3).unwrap().parse().unwrap()
    };
    assert!(secs(&files[0]) < secs(&files[1]), "{files:?}");
    let (a, b) = (read_events(&files[0]), read_events(&files[1]));
    assert_eq!(a.version.as_deref(), Some("brain.Event:2"));
    assert_eq!(b.version.as_deref(), Some("brain.Event:2"));
    assert!(a.session_logs.is_empty());
    // The killed run logged steps 1-10; it resumes after step 5's checkpoint, so its file starts
    // with a SessionLog START at step 6, from which TensorBoard drops the earlier file's events.
    assert!(a.scalars.contains_key(&("train/loss".into(), 10)));
    assert_eq!(
        b.session_logs,
        [(6, 1)],
        "SessionLog START after the resumed step"
    );
    let kept = |m: BTreeMap<(String, u64), f32>| m.into_iter().filter(|((_, s), _)| *s < 6);
    let mut scalars: BTreeMap<_, _> = kept(a.scalars).collect();
    scalars.extend(b.scalars);
    let mut texts: BTreeMap<_, _> = a.texts.into_iter().filter(|((_, s), _)| *s < 6).collect();
    texts.extend(b.texts);
    let records = chatforge::train::metrics::read_records(&run.join("metrics.jsonl")).unwrap();
    let (mut train, mut val, mut samples) = (0, 0, 0);
    for r in &records {
        let step = r["step"].as_u64().unwrap();
        let f = |key: &str| r[key].as_f64().unwrap() as f32;
        let got = |tag: &str| scalars[&(tag.to_string(), step)];
        match r["kind"].as_str().unwrap() {
            "train" => {
                train += 1;
                for (tag, key) in [
                    ("train/loss", "loss"),
                    ("train/lr", "lr"),
                    ("train/grad_norm", "grad_norm"),
                    ("train/tokens_per_sec", "tokens_per_sec"),
                    ("train/mfu", "mfu"),
                ] {
                    assert_eq!(got(tag), f(key), "{tag} at step {step}");
                }
            }
            "val" => {
                val += 1;
                assert_eq!(got("val/loss"), f("val_loss"), "step {step}");
                assert_eq!(got("val/bpb"), f("val_bpb"), "step {step}");
            }
            "sample" => {
                samples += 1;
                let text = &texts[&("samples".to_string(), step)];
                assert_eq!(text, r["text"].as_str().unwrap());
            }
            k => panic!("record kind {k}"),
        }
    }
    assert_eq!((train, val, samples), (12, 3, 2));
    // Nothing else: 5 scalars per train record, 2 per validation.
    assert_eq!(scalars.len(), 12 * 5 + 3 * 2);
}
