//! Library errors. Every variant names what the user has to look at (a file, a field, a key) and, where
//! it helps, what to do about it; the CLI prints them through `anyhow` and exits non-zero.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// A file exists but its content is wrong (malformed JSON, truncated safetensors, bad header...).
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    /// A configuration value is missing, unknown or impossible.
    #[error("config: {0}")]
    Config(String),
    /// The model and something it is paired with disagree (vocab size, context length, shapes).
    #[error("{0}")]
    Mismatch(String),
    /// A model or file by name from the Hugging Face Hub could not be had (the message says what
    /// to do: a token, the name, the network, the cache).
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Training stopped on purpose (non-finite loss and the like).
    #[error("training stopped: {0}")]
    Training(String),
    /// A device or the collective between devices failed (CUDA, NCCL).
    #[error("device: {0}")]
    Device(String),
    /// The generation engine has stopped (the server is shutting down or its worker failed).
    #[error("the generation engine has stopped")]
    EngineStopped,
    /// A signal asked the run to stop; it did so cleanly (the message says how to continue).
    #[error("{0}")]
    Interrupted(String),
    /// The loss diverged; every rank stopped at the same step and the run directory was put in
    /// order (the message, rank 0's, says what is left to resume from).
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::BadFile {
                path,
                msg: "no such file or directory".into(),
            };
        }
        Error::Io { path, err: source }
    }

    pub fn bad_file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::BadFile {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
