//! What stops a run on purpose: a loss that is not finite or has blown up (the weights diverged),
//! and a signal asking the run to end. Either way the run directory is left so that `--resume`
//! continues from weights known to be sound.
//!
//! A step's loss is computed with the weights of the previous step's update, so a checkpoint is
//! known to be sound only once the next step's loss is: the loop prunes old checkpoints only then,
//! and when the guard trips, the checkpoints whose weights gave (or have not yet given) a sound
//! loss are moved out of `--resume`'s sight.

use super::checkpoint::{list_checkpoints, set_aside_from};
use crate::error::Error;
use std::path::Path;

/// A loss above this has diverged: four times that of guessing uniformly over the vocabulary
/// (a fresh model starts at about ln V and only goes down from there).
pub fn blow_up_loss(vocab_size: usize) -> f64 {
    (4.0 * (vocab_size.max(2) as f64).ln()).max(10.0)
}

/// The error for a loss that tripped the guard at step `step` (1-based; the weights were not
/// updated). Rank 0 moves the checkpoints of steps `step - 1` and later (their weights produced
/// this loss or were never checked) to `run_dir/diverged/`; the other ranks only stop.
pub fn diverged(run_dir: &Path, step: usize, loss: f64, bound: f64, lead: bool) -> Error {
    if !lead {
        return Error::Diverged(String::new());
    }
    let what = if loss.is_finite() {
        format!("the loss is {loss:.4e} at step {step}, above {bound:.1} (the run diverged)")
    } else {
        format!("the loss is {loss} at step {step}")
    };
    let from = step.saturating_sub(1).max(1);
    let moved = match set_aside_from(run_dir, from) {
        Ok(m) if m.is_empty() => String::new(),
        Ok(m) => format!(
            " The checkpoints from step {from} on hold the diverging weights and were moved to {}.",
            m[0].parent().unwrap_or(run_dir).display()
        ),
        Err(e) => format!(
            " Moving the checkpoints from step {from} on out of the way failed ({e}); do not resume from them."
        ),
    };
    let resume = match list_checkpoints(run_dir).ok().and_then(|mut c| c.pop()) {
        Some(p) => format!(
            "The last sound checkpoint is {}; continue from it with --resume {} --set train.lr=...",
            p.display(),
            run_dir.display()
        ),
        None => format!(
            "No sound checkpoint exists yet; --resume {} starts the run again from step 0 with its saved config (add --set train.lr=...)",
            run_dir.display()
        ),
    };
    Error::Diverged(format!(
        "{what}; the weights were not updated.{moved} {resume}. Try a lower train.lr or a stronger train.grad_clip."
    ))
}
