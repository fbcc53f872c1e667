//! chatforge: build your own ChatGPT. Train a BPE tokenizer, turn corpora into token shards,
//! pre-train a GPT, and evaluate it — one library behind one command-line program.

pub mod chat;
pub mod chat_template;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod infer;
pub mod model;
pub mod progress;
pub mod serve;
pub mod speedrun;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// The device named on the command line: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when built with the
/// `cuda` feature and a GPU is present, else CPU).
pub fn device(name: &str) -> Result<candle_core::Device> {
    use candle_core::Device;
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cuda" => Ok(Device::new_cuda(0)?),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().map_err(|_| {
                Error::Config(format!(
                    "--device '{s}': expected cuda:N with N a GPU index"
                ))
            })?;
            Ok(Device::new_cuda(n)?)
        }
        s => Err(Error::Config(format!(
            "--device '{s}': expected cpu, cuda, cuda:N or auto"
        ))),
    }
}
