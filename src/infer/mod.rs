//! Text generation: sampling, the decoder of one sequence, and the decoding loop over the KV cache.

pub mod decoder;
pub mod generate;
pub mod group;
pub mod logprobs;
pub mod sampler;
pub mod speed;
pub mod stream;

pub use decoder::{token_budget, Decoder, FinishReason, GenerateOptions, Generation};
pub use generate::{completion_stop_ids, generate_text};
pub use group::generate_groups;
pub use sampler::{Sampler, SamplingParams};
