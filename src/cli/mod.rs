//! Subcommands of the `chatforge` binary that have outgrown `main.rs`.

pub mod train;
