//! Evaluation: loss and bits per byte on text.

pub mod ppl;

pub use ppl::{score_windows, text_perplexity, PplResult};
