//! `chatforge serve`: the OpenAI-compatible server with the web chat page.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require 'Authorization: Bearer KEY' on /v1 requests.
    #[arg(long, env = "CHATFORGE_API_KEY")]
    pub api_key: Option<String>,
    /// The model id clients use (default: the file or directory name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Requests decoded together at most; more wait their turn.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Requests waiting beyond --max-batch at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 128)]
    pub max_queue: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    #[arg(long, default_value = "cpu")]
    pub device: chatforge::DeviceChoice,
    /// How the linear layers' weights are held: auto (a GGUF file's Q4_1/Q8_0 tensors as they
    /// lie, times 8-bit activations as llama.cpp multiplies them; other quantized files as 8-bit
    /// copies; f32 otherwise), f32 (exact, as transformers computes), q8_0 or q4_1.
    #[arg(long, default_value = "auto")]
    pub weights: chatforge::formats::WeightFormat,
    /// Also accept requests whose Host header names this (repeatable). On loopback only
    /// localhost, 127.0.0.1 and [::1] are accepted otherwise, which keeps web pages out.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers (and an idle connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 30)]
    pub body_timeout: u64,
    /// Seconds running replies may take to finish after SIGTERM/SIGINT before they are cut.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let opts = chatforge::serve::ServeOptions {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        model_name: a.model_name,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        body_limit: a.max_body_bytes,
        device: a.device,
        weights: a.weights,
        allowed_hosts: a.allowed_hosts,
        timeouts: chatforge::serve::listen::Timeouts {
            header: Duration::from_secs(a.header_timeout.max(1)),
            body: Duration::from_secs(a.body_timeout.max(1)),
            grace: Duration::from_secs(a.shutdown_grace),
        },
    };
    chatforge::serve::serve(&a.model, &opts)?;
    Ok(())
}
