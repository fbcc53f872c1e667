//! The subcommands of the `chatforge` binary, one file each: its clap arguments and a call into
//! the library.

pub mod allocator;
pub mod bench;
pub mod chat;
pub mod convert;
pub mod dashboard;
pub mod data;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod output;
pub mod rl;
pub mod sampling;
pub mod serve;
pub mod speedrun;
pub mod tokenizer;
pub mod train;
