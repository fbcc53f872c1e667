//! Evaluation: loss and bits per byte on text, and benchmark tasks.

pub mod ppl;
pub mod tasks;

pub use ppl::{score_windows, text_perplexity, PplResult};
