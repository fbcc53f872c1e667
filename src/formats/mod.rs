//! Everything that reads or writes files other tools read: Hugging Face model directories, their
//! config.json and tensor names (`hf`, `hf_config`, `hf_names`), GGUF files read (`gguf`,
//! `gguf_header`, `gguf_names`, `gguf_blocks`, `gguf_tokenizer`) and written (`gguf_export`,
//! with an Ollama Modelfile from `ollama`), PEFT adapters (`peft`), model cards (`model_card`),
//! models and data by name from the Hugging Face Hub (`hub`, `hub_ref`, `hub_fetch`), and
//! [`LoadedModel`], a model from any of them.

pub mod gguf;
mod gguf_blocks;
pub mod gguf_export;
pub mod gguf_header;
mod gguf_names;
mod gguf_tokenizer;
pub mod hf;
pub mod hf_config;
mod hf_names;
pub mod hub;
mod hub_fetch;
mod hub_ref;
pub mod loaded;
pub mod model_card;
pub mod ollama;
pub mod peft;

pub use loaded::{check_vocab, save_model_dir, LoadedModel, WeightFormat};
pub use model_card::{Library, ModelCard};
