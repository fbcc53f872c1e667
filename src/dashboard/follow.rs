//! Following a run's `metrics.jsonl` as training appends to it: the complete lines that are new
//! since the last look, and a restart when the file was replaced (a resumed run rewrites it
//! without the steps after its checkpoint).

use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// What changed in a followed file since the last [`Follower::poll`].
#[derive(Debug, PartialEq)]
pub enum Change {
    /// The file was replaced or shortened: drop what was read of it; `records` is it anew.
    Reset(Vec<Value>),
    /// Records appended since the last poll.
    Appended(Vec<Value>),
}

/// One metrics file, read as it grows.
pub struct Follower {
    path: PathBuf,
    /// Bytes of complete lines already read.
    offset: u64,
    /// The file's identity when it was read (inode on Unix), to notice a replacement.
    identity: Option<u64>,
}

impl Follower {
    pub fn new(path: PathBuf) -> Self {
        Follower {
            path,
            offset: 0,
            identity: None,
        }
    }

    /// New complete lines (a half-written last line waits for its newline). A missing file is
    /// nothing yet (the run has not logged its first step); a line that is not JSON is skipped.
    pub fn poll(&mut self) -> Change {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Change::Appended(Vec::new());
        };
        let identity = file_identity(&meta);
        let replaced = self.identity.is_some() && self.identity != identity;
        let reset = replaced || meta.len() < self.offset;
        if reset {
            self.offset = 0;
        }
        self.identity = identity;
        let records = self.read_new();
        match reset {
            true => Change::Reset(records),
            false => Change::Appended(records),
        }
    }

    fn read_new(&mut self) -> Vec<Value> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&bytes[..end])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(unix)]
fn file_identity(meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.ino())
}

#[cfg(not(unix))]
fn file_identity(_meta: &std::fs::Metadata) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appends_and_restarts_on_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut f = Follower::new(path.clone());
        assert_eq!(f.poll(), Change::Appended(vec![]), "no file yet");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        let v = |s: u64| serde_json::json!({ "step": s });
        assert_eq!(f.poll(), Change::Appended(vec![v(1), v(2)]));
        let mut a = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        a.write_all(b"ep\":3}\n").unwrap();
        assert_eq!(
            f.poll(),
            Change::Appended(vec![v(3)]),
            "the half line, once whole"
        );
        assert_eq!(f.poll(), Change::Appended(vec![]));
        // Replaced by a rename (as a resumed run rewrites it).
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "{\"step\":1}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(f.poll(), Change::Reset(vec![v(1)]));
    }
}
