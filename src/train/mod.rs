//! Training: the loop, AdamW, LR schedules, checkpoints, metrics and the loss plot; the objectives
//! of pre-training, fine-tuning, preference tuning (DPO) and reinforcement learning (GRPO).

mod chat_source;
pub mod checkpoint;
mod data;
pub mod dpo;
mod finish;
mod gradients;
pub mod grpo;
mod guard;
pub mod interrupt;
pub mod metrics;
pub mod optim;
mod pair_source;
mod periodic;
pub mod plot;
mod profile;
mod rl;
pub mod rl_source;
mod run;
pub mod schedule;
pub mod sft;
mod source;
mod start;
pub mod tensorboard;
pub mod trainer;

pub use chat_source::{load_chat_files, parse_replacements};
pub use checkpoint::run_dir_of;
pub use finish::RunSummary;
pub use run::ConfigEdit;
pub use sft::{sft, sft_on};
pub use start::model_config_for;
pub use trainer::{pretrain, pretrain_on, resume, resume_on};
