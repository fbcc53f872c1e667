//! `metrics.jsonl`: one JSON object per line, appended as training goes (`kind` is "train", "val"
//! or "sample"), readable by pandas/jq and by the loss-curve plot.

use crate::error::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
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
        Ok(MetricsLog { path })
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
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
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
