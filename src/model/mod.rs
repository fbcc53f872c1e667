//! The model: the Transformer read top-down (`transformer`) and its inference entry points
//! (`inference`), its config, KV cache, parameters and
//! LoRA adapters. The ops it calls are in `ops`, the files it is read from and written to in
//! `formats`.

pub mod config;
mod inference;
pub mod kv_cache;
pub mod lora;
pub mod params;
pub mod transformer;

pub use config::{Family, MlpKind, ModelConfig, NormKind, Positions};
pub use kv_cache::KvCache;
pub use transformer::Transformer;
