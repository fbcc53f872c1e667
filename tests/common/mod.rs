//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod corpora;
pub mod hub_server;
pub mod server;
pub mod tiny_gguf;
pub mod tuning;

#[allow(unused_imports)]
pub use corpora::{chat_base_and_data, chat_base_and_pairs, chat_base_gguf, shakespeare_shards};
#[allow(unused_imports)]
pub use tuning::{check_tuning_gradients, tuning_case};

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    match built.exists() {
        true => built,
        // A test binary copied to another checkout (bench/gpu.sh), run from its root.
        false => PathBuf::from("tests/fixtures"),
    }
}

/// `../shared/data` next to the checkout (CI lays it there too).
/// GPT-2's tokenizer from ../shared/data's encoder.json + vocab.bpe, built once per test binary.
pub fn gpt2_tokenizer() -> &'static chatforge::tokenizer::Tokenizer {
    static TOK: std::sync::OnceLock<chatforge::tokenizer::Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        chatforge::tokenizer::Tokenizer::from_gpt2_files(
            &shared_data().join("gpt2_encoder.json"),
            &shared_data().join("gpt2_vocab.bpe"),
        )
        .unwrap()
    })
}

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

/// The records of `kind` ("train", "val", "sample") in a run's metrics.jsonl.
pub fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    chatforge::train::metrics::read_records(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// The largest |a - b|, compared on the CPU (either may be on a GPU).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    max_abs(&(cpu(a) - cpu(b)).unwrap())
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

/// A command that starts the chatforge binary built for the tests: directly, or through the
/// program named in `CHATFORGE_TEST_RUNNER` (with its arguments, split at spaces), as cargo's
/// target runner starts the test binaries: tests/aarch64.sh sets it to qemu-aarch64.
pub fn chatforge_command() -> std::process::Command {
    let runner = std::env::var("CHATFORGE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = std::process::Command::new(program);
            c.args(words).arg(bin());
            c
        }
        None => std::process::Command::new(bin()),
    }
}

/// Runs chatforge with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = chatforge_command()
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
    let ours = chatforge::formats::hf::weights_to_hf(cfg, &ours).unwrap();
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

/// Value and gradients (one per input; both as f32) of sum(f(inputs) * w) for a fixed weighting w
/// of f's output shape and dtype.
pub fn value_and_grads(
    inputs: &[&Tensor],
    f: impl Fn(&[&Tensor]) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<candle_core::Var> = inputs
        .iter()
        .map(|x| candle_core::Var::from_tensor(x).unwrap())
        .collect();
    let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let y = f(&ts).unwrap();
    let w = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .reshape(y.shape())
        .unwrap();
    let w = (w * 0.37)
        .unwrap()
        .sin()
        .unwrap()
        .to_dtype(y.dtype())
        .unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    let g = ts
        .iter()
        .map(|t| {
            let g = grads.get(t).expect("a gradient reaches every input");
            assert_eq!(g.dtype(), t.dtype(), "a gradient has its input's dtype");
            f32(g)
        })
        .collect();
    (f32(&y), g)
}

/// [`value_and_grads`] of one input.
pub fn value_and_grad(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Tensor) {
    let (y, mut g) = value_and_grads(&[x], |t| f(t[0]));
    (y, g.remove(0))
}

pub fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d < tol, "{name}: max difference {d}");
}

/// A fixture model for inference, the first sequence of its reference inputs (1, T), the logits of
/// the full forward pass over it, and an empty KV cache to decode it again.
pub fn decoding_case(
    name: &str,
) -> (
    chatforge::model::Transformer,
    Tensor,
    Tensor,
    chatforge::model::KvCache,
) {
    decoding_case_on(name, &Device::Cpu)
}

/// [`decoding_case`] on `device`.
pub fn decoding_case_on(
    name: &str,
    device: &Device,
) -> (
    chatforge::model::Transformer,
    Tensor,
    Tensor,
    chatforge::model::KvCache,
) {
    let m = chatforge::formats::LoadedModel::load(&fixtures().join(name), device).unwrap();
    let model = m.transformer().unwrap();
    let ids = load_expected(name)["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap()
        .to_device(device)
        .unwrap();
    let full = model.forward(&ids, 0, None).unwrap();
    let cfg = &m.cfg;
    let cache = chatforge::model::KvCache::new(cfg.n_layer, 1, cfg.n_kv_head, cfg.head_dim, device)
        .unwrap();
    (model, ids, full, cache)
}

/// A fixture model as training sees it (its weights as variables) with transformers' values for it.
pub struct ReferenceCase {
    pub model: chatforge::formats::LoadedModel,
    pub expected: HashMap<String, Tensor>,
    /// The reference inputs (B, T) as u32.
    pub ids: Tensor,
    pub params: chatforge::model::params::Params,
    pub transformer: chatforge::model::Transformer,
}

pub fn reference_case(name: &str) -> ReferenceCase {
    reference_case_on(name, &Device::Cpu)
}

/// [`reference_case`] with the model and inputs on `device` (the expected values stay on the CPU).
pub fn reference_case_on(name: &str, device: &Device) -> ReferenceCase {
    let model = chatforge::formats::LoadedModel::load(&fixtures().join(name), device).unwrap();
    let expected = load_expected(name);
    let ids = expected["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_device(device)
        .unwrap();
    let params = chatforge::model::params::Params::from_tensors(&model.weights).unwrap();
    let transformer = chatforge::model::Transformer::new(&model.cfg, &params.tensors()).unwrap();
    ReferenceCase {
        model,
        expected,
        ids,
        params,
        transformer,
    }
}

/// The logits of `ids` (1, T >= 8) decoded in pieces through `cache`: a 4-token prompt, a 3-token
/// continuation (masked against the cache), then one token at a time.
pub fn decode_in_pieces(
    model: &chatforge::model::Transformer,
    ids: &Tensor,
    cache: &mut chatforge::model::KvCache,
) -> Tensor {
    let mut rows = vec![
        model
            .forward(&ids.narrow(1, 0, 4).unwrap(), 0, Some(cache))
            .unwrap(),
        model
            .forward(&ids.narrow(1, 4, 3).unwrap(), 4, Some(cache))
            .unwrap(),
    ];
    for t in 7..ids.dim(1).unwrap() {
        let x = ids.narrow(1, t, 1).unwrap();
        rows.push(model.forward(&x, t, Some(cache)).unwrap());
    }
    Tensor::cat(&rows, 1).unwrap()
}

/// In training mode on `device`: the logits, the loss and every gradient against transformers.
/// Returns the case and the loss for further checks.
pub fn check_training_against_reference(
    name: &str,
    device: &Device,
    path: &str,
) -> (ReferenceCase, Tensor) {
    let mut c = reference_case_on(name, device);
    let targets = c.expected["targets"].to_device(device).unwrap();
    c.transformer.set_training(true);
    let logits = c.transformer.forward(&c.ids, 0, None).unwrap();
    let d = max_abs_diff(&logits, &c.expected["logits"]);
    eprintln!("{name} ({path}): max |logits - transformers| = {d:.3e}");
    assert!(d < 1e-4, "{name} ({path}): logits differ by {d}");
    let loss = c.transformer.loss(&c.ids, &targets).unwrap();
    let grads = c.transformer.backward(&loss).unwrap();
    let (cfg, exp) = (&c.model.cfg, &c.expected);
    check_loss_and_gradients(name, path, cfg, &c.params, exp, &loss, grads);
    (c, loss)
}
