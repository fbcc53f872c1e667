//! chatforge: build your own ChatGPT. Train a BPE tokenizer, turn corpora into token shards,
//! pre-train a GPT, and evaluate it — one library behind one command-line program.

pub mod chat;
pub mod chat_template;
pub mod config;
pub mod dashboard;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod formats;
pub mod fsutil;
pub mod infer;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod progress;
pub mod serve;
pub mod speedrun;
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use device::DeviceChoice;
pub use error::{Error, Result};
