//! `metrics.jsonl`: one JSON object per line, appended as training goes (`kind` is "train", "val"
//! or "sample"), readable by pandas/jq and by the loss-curve plot; each record is also written
//! to the run's TensorBoard event file (`tensorboard`).

use super::tensorboard::EventFile;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use candle_core::Device;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    /// The same records as TensorBoard events.
    events: EventFile,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. When resuming at `resume_step`, lines from later steps (written
    /// after that checkpoint by the interrupted run) are dropped so the log matches the run.
    pub fn open(run_dir: &Path, resume_step: Option<usize>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let Some(step) = resume_step {
            if path.exists() {
                let kept: Vec<String> = read_records(&path)?
                    .into_iter()
                    .filter(|r| {
                        r.get("step")
                            .and_then(Value::as_u64)
                            .is_some_and(|s| s as usize <= step)
                    })
                    .map(|r| r.to_string() + "\n")
                    .collect();
                crate::fsutil::write_atomic(&path, kept.concat().as_bytes())?;
            }
        }
        let events = EventFile::create(run_dir, resume_step)?;
        Ok(MetricsLog { path, events })
    }

    pub fn append(&self, record: Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        // One write of the whole line: a process killed around it leaves the line whole or absent
        // (a partial last line from an older writer is skipped by `read_records`).
        f.write_all(format!("{record}\n").as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.events.append(&record)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TensorBoard event file this run writes.
    pub fn events_path(&self) -> &Path {
        self.events.path()
    }
}

/// The records of a metrics file. A last line without its newline is what a killed run left
/// half-written: it is skipped, not an error.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let text = crate::fsutil::read_to_string(path)?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The peak FLOP/s that MFU is measured against: `train.peak_flops`, else the device's.
pub(super) fn device_peak_flops(cfg: &RunConfig, device: &Device) -> f64 {
    if cfg.train.peak_flops > 0.0 {
        return cfg.train.peak_flops;
    }
    match device {
        Device::Cpu => candle_core::utils::get_num_threads() as f64 * cpu_core_peak_flops(),
        // H100/H200 dense bf16.
        _ => 989e12,
    }
}

/// fp32 FLOP/s of one core: FLOP per cycle from the vector units the CPU reports, times the clock
/// /proc/cpuinfo gives (3 GHz where it gives none). Two 512-bit FMA pipes (16 lanes x 2 FLOP x 2)
/// are 64 FLOP/cycle: Intel with avx512f, AMD from Zen 5 (family 0x1a). AVX2 + FMA, Zen 4 (which
/// splits 512-bit work over two 256-bit pipes) and Arm cores are taken as 32; x86 without FMA 8. `train.peak_flops`
/// overrides it (CPUs with a single 512-bit pipe have half this).
fn cpu_core_peak_flops() -> f64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let ghz = field("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(3.0, |mhz| mhz / 1000.0);
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let family = field("cpu family").and_then(|v| v.parse::<u32>().ok());
    let per_cycle = match field("vendor_id").as_deref() {
        // Arm cores: two to four 128-bit FMA pipes.
        _ if cfg!(not(target_arch = "x86_64")) => 32.0,
        _ if !has("fma") => 8.0,
        Some("GenuineIntel") if has("avx512f") => 64.0,
        Some("AuthenticAMD") if has("avx512f") && family >= Some(0x1a) => 64.0,
        _ => 32.0,
    };
    per_cycle * ghz * 1e9
}
