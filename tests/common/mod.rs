//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod corpora;
pub mod server;

#[allow(unused_imports)]
pub use corpora::{chat_base_and_data, shakespeare_shards};

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `../shared/data` next to the checkout (CI lays it there too).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub fn load_expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(format!("{name}-expected.safetensors")),
        &Device::Cpu,
    )
    .expect("fixture loads")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).unwrap())
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Path of the chatforge binary built for the integration tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chatforge"))
}

/// Runs chatforge with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("chatforge runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The loss and every parameter's gradient (compared in HF names and layouts) against the
/// fixture's transformers values.
pub fn check_loss_and_gradients(
    name: &str,
    path: &str,
    cfg: &chatforge::model::ModelConfig,
    params: &chatforge::model::params::Params,
    exp: &std::collections::HashMap<String, Tensor>,
    loss: &Tensor,
    grads: candle_core::backprop::GradStore,
) {
    let name = format!("{name} ({path})");
    let dl = (loss.to_scalar::<f32>().unwrap() - exp["loss"].to_vec1::<f32>().unwrap()[0]).abs();
    eprintln!("{name}: |loss - transformers| = {dl:.3e}");
    assert!(dl < 1e-5, "{name}: loss differs by {dl}");

    // Gradients of every parameter, compared in HF names and layouts.
    let ours: std::collections::BTreeMap<String, Tensor> = params
        .vars
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {k}: cut?"))
                    .clone(),
            )
        })
        .collect();
    let ours = chatforge::model::hf::weights_to_hf(cfg, &ours).unwrap();
    let expected_grads = exp.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        ours.len(),
        expected_grads,
        "every parameter of the reference has a gradient here"
    );
    let mut worst = 0f32;
    for (hf_name, g) in &ours {
        let r = &exp[&format!("grad.{hf_name}")];
        let rel = max_abs_diff(g, r) / max_abs(r).max(1e-8);
        worst = worst.max(rel);
        assert!(
            rel < 1e-4,
            "{name}: gradient of {hf_name} differs (relative {rel})"
        );
    }
    eprintln!("{name}: worst relative gradient difference {worst:.3e}");
}
