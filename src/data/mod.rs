//! Corpora to token shards, and batches from shards.

pub mod chat;
pub mod loader;
pub mod parquet;
pub mod preference;
pub mod prepare;
pub mod sft;
pub mod shard;
pub mod sources;
pub mod synthetic;

pub use loader::{load_meta, Batch, BatchLoader, ShardSet};
pub use prepare::{prepare, DataMeta, PrepareOptions};
pub use shard::{TokenShard, TokenWidth};
