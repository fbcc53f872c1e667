//! Text generation: sampling and the decoding loop over the KV cache.

pub mod generate;
pub mod sampler;

pub use generate::generate;
pub use sampler::{Sampler, SamplingParams};
