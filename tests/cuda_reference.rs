//! On a GPU (`--features cuda`; `bench/gpu.sh` runs these first): the Transformer on CUDA against
//! transformers, i.e. the portable formulation in `ops` on the hardware it is written for. Logits, loss and every
//! gradient in f32; the loss in bf16; decoding with a KV cache against the full forward pass.
//! Without a GPU these fail: they are not part of the CPU test command.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use std::collections::BTreeMap;

fn gpu() -> Device {
    chatforge::cuda_device(0).expect("these tests need a CUDA GPU (bench/gpu.sh runs them)")
}

fn check_against_reference(name: &str) {
    let dev = gpu();
    let (c, _) = check_training_against_reference(name, &dev, "CUDA f32");
    let targets = c.expected["targets"].to_device(&dev).unwrap();

    // bf16 compute, as train.dtype=bf16 builds it: the loss to bf16's precision.
    let half: BTreeMap<String, Tensor> = c
        .params
        .tensors()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap()))
        .collect();
    let model = chatforge::model::Transformer::new(&c.model.cfg, &half).unwrap();
    let loss = model
        .loss(&c.ids, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = c.expected["loss"].to_vec1::<f32>().unwrap()[0];
    eprintln!("{name}: CUDA bf16 loss {loss}, transformers f32 {want}");
    assert!(
        (loss - want).abs() / want < 0.02,
        "{name}: bf16 loss {loss} vs {want}"
    );
}

#[test]
fn gpt2_on_cuda_matches_transformers() {
    check_against_reference("gpt2-tiny");
}

#[test]
fn llama_on_cuda_matches_transformers() {
    check_against_reference("llama-tiny");
}

#[test]
fn cuda_decoding_with_a_cache_equals_the_full_forward_pass() {
    let dev = gpu();
    for name in ["gpt2-tiny", "llama-tiny"] {
        let (model, ids, full, mut cache) = decoding_case_on(name, &dev);
        let d = max_abs_diff(&full, &decode_in_pieces(&model, &ids, &mut cache));
        assert!(d < 1e-4, "{name}: cached decoding on CUDA differs by {d}");
    }
}
