//! Evaluation: loss and bits per byte on text, and benchmark tasks.

pub mod crows_pairs;
pub mod ppl;
pub mod run;
pub mod tasks;

pub use ppl::{score_windows, text_perplexity, PplResult};
pub use run::{run_task, EvalOptions, EvalTask};
