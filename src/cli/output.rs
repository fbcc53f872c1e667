//! Writing results to stdout: a reader that went away (`chatforge bench --json | head -c 10`) is an
//! error that says so, not a panic (`println!` panics on a closed pipe).

use anyhow::{Context, Result};
use std::io::Write;

/// Writes `text` and a newline to stdout.
pub fn line(text: impl std::fmt::Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|_| out.flush())
        .context("writing to stdout (was the reading end closed?)")
}
