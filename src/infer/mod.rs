//! Text generation: sampling and the decoding loop over the KV cache.

pub mod generate;
pub mod sampler;
pub mod speed;
pub mod stream;

pub use generate::{generate, generate_text, FinishReason, GenerateOptions, Generation};
pub use sampler::{Sampler, SamplingParams};
