//! Training: the loop, AdamW, LR schedules, checkpoints, metrics and the loss plot.

pub mod checkpoint;
mod guard;
pub mod interrupt;
pub mod metrics;
pub mod optim;
pub mod plot;
mod profile;
pub mod schedule;
mod setup;
pub mod sft;
mod source;
pub mod trainer;

pub use sft::{sft, sft_on};
pub use trainer::{pretrain, pretrain_on, resume, resume_on, RunSummary};
