//! LoRA against PEFT (fixtures from tools/make_fixtures.py --only lora): logits, loss and adapter
//! gradients of a GPT-2 (Conv1D, fused c_attn) and a Llama (GQA, q/k/v and gate/up as parts of our
//! fused weights) with adapters on every linear layer; merging; the trainable parameter count.

mod common;

use candle_core::{DType, Device, Tensor};
use chatforge::formats::peft;
use chatforge::formats::{Library, LoadedModel, ModelCard};
use chatforge::model::lora::{self, LoraConfig};
use chatforge::model::params::Params;
use chatforge::model::Transformer;
use chatforge::ops::loss::cross_entropy;
use common::*;
use std::collections::BTreeMap;

fn check_against_peft(name: &str) {
    let base = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
    let adir = fixtures().join(format!("{name}-lora"));
    let (lcfg, _, adapter) = peft::load_adapter(&adir, &base.cfg, &Device::Cpu).unwrap();
    assert_eq!((lcfg.rank, lcfg.alpha), (4, 8.0));
    let exp = load_expected(&format!("{name}-lora"));
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();

    // Adapters on a frozen base: logits, loss, and gradients of A and B only.
    let params = Params::from_tensors(&adapter).unwrap();
    let ad = lora::adapters(&base.cfg, &lcfg, &params.tensors()).unwrap();
    let model = Transformer::with_adapters(&base.cfg, &base.weights, ad).unwrap();
    let logits = model.forward(&ids, 0, None).unwrap();
    let d = max_abs_diff(&logits, &exp["logits"]);
    eprintln!("{name}+LoRA: max |logits - PEFT| = {d:.3e}");
    assert!(d < 1e-4, "{name}: logits with the adapter differ by {d}");
    let plain = base.transformer().unwrap().forward(&ids, 0, None).unwrap();
    assert!(
        max_abs_diff(&plain, &exp["logits"]) > 1e-2,
        "the adapter changes the logits (else this test proves nothing)"
    );
    let loss = cross_entropy(&logits, &exp["targets"]).unwrap();
    let dl = (loss.to_scalar::<f32>().unwrap() - exp["loss"].to_vec1::<f32>().unwrap()[0]).abs();
    assert!(dl < 1e-5, "{name}: loss differs by {dl}");
    let grads = loss.backward().unwrap();
    let n_ref = exp.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        params.vars.len(),
        n_ref,
        "one trainable tensor per PEFT one"
    );
    let mut worst = 0f32;
    for (k, v) in &params.vars {
        let g = grads.get(v.as_tensor()).expect("adapter gradient");
        let r = &exp[&format!("grad.{k}")];
        let rel = max_abs_diff(g, r) / max_abs(r).max(1e-8);
        worst = worst.max(rel);
        assert!(
            rel < 1e-4,
            "{name}: gradient of {k} differs (relative {rel})"
        );
    }
    eprintln!("{name}+LoRA: worst relative adapter gradient difference {worst:.3e}");
    for w in base.weights.values() {
        assert!(grads.get(w).is_none(), "the base is frozen: no gradient");
    }

    // Merged weights give the same logits as base + adapter; the adapter directory loads merged.
    let merged = lora::merge(&base.cfg, &lcfg, &base.weights, &adapter).unwrap();
    let m_logits = Transformer::new(&base.cfg, &merged)
        .unwrap()
        .forward(&ids, 0, None)
        .unwrap();
    let dm = max_abs_diff(&m_logits, &logits);
    eprintln!("{name}: max |merged - base+adapter| = {dm:.3e}");
    assert!(dm < 1e-4);
    let via_dir = LoadedModel::load(&adir, &Device::Cpu).unwrap();
    let dd = max_abs_diff(
        &via_dir
            .transformer()
            .unwrap()
            .forward(&ids, 0, None)
            .unwrap(),
        &exp["logits"],
    );
    assert!(dd < 1e-4, "loading the adapter directory merges it: {dd}");
}

#[test]
fn gpt2_lora_matches_peft() {
    check_against_peft("gpt2-tiny");
}

#[test]
fn llama_lora_matches_peft() {
    check_against_peft("llama-tiny");
}

#[test]
fn trainable_parameter_count_is_rank_times_in_plus_out() {
    let m = LoadedModel::load(&fixtures().join("llama-tiny"), &Device::Cpu).unwrap();
    // Llama-tiny: width 32, 4 heads x 8 (q: 32 out), 2 KV heads x 8 (k, v: 16 out), MLP 48.
    let per_layer =
        |r: usize| r * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 48) + (48 + 32));
    let all = lora::slots(&m.cfg, &["all-linear".into()]).unwrap();
    assert_eq!(lora::param_count(&all, 4), 2 * per_layer(4));
    assert_eq!(lora::param_count(&all, 16), 2 * per_layer(16));
    // The same count as PEFT's own adapter file for rank 4.
    let (_, _, w) =
        peft::load_adapter(&fixtures().join("llama-tiny-lora"), &m.cfg, &Device::Cpu).unwrap();
    let numel: usize = w.values().map(|t| t.elem_count()).sum();
    assert_eq!(numel, lora::param_count(&all, 4));
    // q_proj + v_proj only: 2 layers x r x ((32 + 32) + (32 + 16)).
    let qv = lora::slots(&m.cfg, &["q_proj".into(), "v_proj".into()]).unwrap();
    assert_eq!(lora::param_count(&qv, 8), 2 * 8 * (64 + 48));
    let init = lora::init(&qv, 8, 1, &Device::Cpu).unwrap();
    assert_eq!(
        init.values().map(|t| t.elem_count()).sum::<usize>(),
        2 * 8 * (64 + 48)
    );
    // B starts at zero: the adapted model is the base model.
    for (k, t) in &init {
        if k.contains("lora_B") {
            assert_eq!(max_abs(t), 0.0, "{k}");
        }
    }
}

#[test]
fn bad_targets_and_adapter_files_are_clear_errors() {
    let m = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let e = lora::slots(&m.cfg, &["q_proj".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("q_proj") && e.contains("c_attn"), "{e}");
    // A Llama adapter on a GPT-2 base: the error names the module.
    let e = peft::load_adapter(&fixtures().join("llama-tiny-lora"), &m.cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a linear layer of a gpt2 model"), "{e}");
    // Wrong shapes (a rank-4 file read as rank 8).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    let src = fixtures().join("gpt2-tiny-lora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json"))
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let e = peft::load_adapter(&dir, &m.cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lora_A") && e.contains("shape"), "{e}");
    // A base model that is not on this machine.
    let cfg = std::fs::read_to_string(dir.join("adapter_config.json"))
        .unwrap()
        .replace("../gpt2-tiny", "/nonexistent/base-model");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let e = LoadedModel::load(&dir, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    // (A Hub id there is looked up on the Hub: tests/hub.rs.)
    assert!(
        e.contains("/nonexistent/base-model") && e.contains("neither a local path nor a Hub id"),
        "{e}"
    );
}

#[test]
fn save_then_load_adapter_round_trips_in_peft_layout() {
    let m = LoadedModel::load(&fixtures().join("llama-tiny"), &Device::Cpu).unwrap();
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "down_proj".into()],
        dropout: 0.05,
    };
    let slots = lora::slots(&m.cfg, &lcfg.targets).unwrap();
    let mut w = lora::init(&slots, 2, 7, &Device::Cpu).unwrap();
    for (k, t) in w.iter_mut() {
        if k.contains("lora_B") {
            *t = Tensor::randn(0f32, 1.0, t.dims(), &Device::Cpu).unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    let card = ModelCard::new("adapter", &m.cfg, Library::Peft, "A test adapter.");
    peft::save_adapter(&dir, &m.cfg, &lcfg, &w, "/models/base", &card).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 2);
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["q_proj", "down_proj"])
    );
    assert_eq!(json["base_model_name_or_path"], "/models/base");
    let (back_cfg, _, back) = peft::load_adapter(&dir, &m.cfg, &Device::Cpu).unwrap();
    assert_eq!(back_cfg, lcfg);
    let names: Vec<&String> = back.keys().collect();
    assert!(
        names.contains(&&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string())
    );
    let same: BTreeMap<_, _> = back
        .iter()
        .map(|(k, t)| (k, max_abs_diff(t, &w[k])))
        .collect();
    assert!(same.values().all(|&d| d == 0.0), "{same:?}");
}
