//! TensorBoard's event files, written beside `metrics.jsonl`: every record of the metrics log as
//! scalars (`train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_sec`, `train/mfu`,
//! `val/loss`, `val/bpb`) and samples as text (`samples`), so `tensorboard --logdir runs/` shows
//! a run as it trains.
//!
//! The file is TFRecord framing (length, masked CRC-32C of the length, an `Event` protocol buffer,
//! its masked CRC-32C) of `tensorflow.Event` messages, encoded here field by field: the handful
//! of fields TensorBoard reads do not warrant a protobuf code generator.

use crate::error::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open `events.out.tfevents.*` file of one run (one per process, as TensorFlow writes them).
pub struct EventFile {
    path: PathBuf,
}

impl EventFile {
    /// Starts a new event file in `run_dir` with its version record. When resuming after
    /// `resume_step`, a `SessionLog` START at the next step tells TensorBoard to drop what earlier
    /// files recorded from there on (the steps the interrupted run did not checkpoint).
    pub fn create(run_dir: &Path, resume_step: Option<usize>) -> Result<Self> {
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        // TensorBoard reads a run's files in name order: a file started within the same second
        // as an earlier one (a quick resume) takes the next second, so the names sort as the
        // files were made.
        let secs = (now as u64).max(newest_event_file_secs(run_dir).map_or(0, |s| s + 1));
        let name = format!(
            "events.out.tfevents.{secs:010}.{host}.{}.0",
            std::process::id()
        );
        let f = EventFile {
            path: run_dir.join(name),
        };
        let mut first = event(now, 0);
        put_bytes(&mut first, 3, b"brain.Event:2");
        f.write(&[first])?;
        if let Some(step) = resume_step {
            // TensorBoard keeps what earlier files hold below a START's step.
            let mut start = event(now, step as i64 + 1);
            let mut log = Vec::new();
            put_varint_field(&mut log, 1, 1); // SessionLog.status = START
            put_bytes(&mut start, 7, &log); // Event.session_log
            f.write(&[start])?;
        }
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The events of one metrics record (see the module's tags); other kinds write nothing.
    pub fn append(&self, record: &Value) -> Result<()> {
        let Some(step) = record.get("step").and_then(Value::as_i64) else {
            return Ok(());
        };
        let now = wall_time();
        let kind = record.get("kind").and_then(Value::as_str).unwrap_or("");
        let mut values = Vec::new();
        match kind {
            "train" | "val" => {
                let Some(fields) = record.as_object() else {
                    return Ok(());
                };
                for (key, v) in fields {
                    if matches!(
                        key.as_str(),
                        "kind" | "step" | "tokens" | "elapsed" | "total_steps"
                    ) {
                        continue;
                    }
                    if let Some(x) = v.as_f64() {
                        let name = key.strip_prefix("val_").unwrap_or(key);
                        values.push(scalar_value(&format!("{kind}/{name}"), x as f32));
                    }
                }
            }
            "sample" => {
                if let Some(text) = record.get("text").and_then(Value::as_str) {
                    values.push(text_value("samples", text));
                }
            }
            _ => {}
        }
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for v in values {
            put_bytes(&mut summary, 1, &v);
        }
        let mut e = event(now, step);
        put_bytes(&mut e, 5, &summary);
        self.write(&[e])
    }

    /// Appends the records in one write, so a process killed around it leaves them whole or absent.
    fn write(&self, events: &[Vec<u8>]) -> Result<()> {
        let mut bytes = Vec::new();
        for e in events {
            let len = (e.len() as u64).to_le_bytes();
            bytes.extend_from_slice(&len);
            bytes.extend_from_slice(&masked_crc(&len).to_le_bytes());
            bytes.extend_from_slice(e);
            bytes.extend_from_slice(&masked_crc(e).to_le_bytes());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }
}

/// The time in the name of the newest event file in `dir`, if any.
fn newest_event_file_secs(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("events.out.tfevents.")?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits plus a constant.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `Event { wall_time: 1, step: 2 }`; the caller adds `file_version` (3), `summary` (5) or
/// `session_log` (7).
fn event(wall_time: f64, step: i64) -> Vec<u8> {
    let mut e = vec![0x09]; // field 1, 64-bit
    e.extend_from_slice(&wall_time.to_le_bytes());
    put_varint_field(&mut e, 2, step as u64);
    e
}

/// `Summary.Value { tag: 1, simple_value: 2 }`.
fn scalar_value(tag: &str, x: f32) -> Vec<u8> {
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    v.push(0x15); // field 2, 32-bit
    v.extend_from_slice(&x.to_le_bytes());
    v
}

/// `Summary.Value { tag: 1, metadata: 9 { plugin_data: 1 { plugin_name: 1 = "text" } },
/// tensor: 8 { dtype: 1 = DT_STRING, tensor_shape: 2 { dim: 2 { size: 1 = 1 } }, string_val: 8 } }`,
/// as TensorBoard's text plugin reads it.
fn text_value(tag: &str, text: &str) -> Vec<u8> {
    let mut plugin = Vec::new();
    put_bytes(&mut plugin, 1, b"text");
    let mut metadata = Vec::new();
    put_bytes(&mut metadata, 1, &plugin);
    let mut dim = Vec::new();
    put_varint_field(&mut dim, 1, 1);
    let mut shape = Vec::new();
    put_bytes(&mut shape, 2, &dim);
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, 1, 7); // DT_STRING
    put_bytes(&mut tensor, 2, &shape);
    put_bytes(&mut tensor, 8, text.as_bytes());
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    put_bytes(&mut v, 9, &metadata);
    put_bytes(&mut v, 8, &tensor);
    v
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, x: u64) {
    put_varint(out, field << 3);
    put_varint(out, x);
}

/// A length-delimited field (strings, bytes, nested messages).
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}
