//! `chatforge sft` end to end on a small model with its own ChatML tokenizer: full fine-tuning,
//! LoRA (base untouched, PEFT files, merged == base + adapter), exact resume, and input errors.

mod common;

use candle_core::{DType, Device, Tensor};
use chatforge::formats::peft;
use chatforge::formats::LoadedModel;
use chatforge::model::lora;
use chatforge::model::Transformer;
use common::*;
use std::path::Path;

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

fn sft(args: &[&str]) -> String {
    let (code, out, err) = run(&[&["sft"], args].concat());
    assert_eq!(code, 0, "sft failed:\n{out}\n{err}");
    err
}

#[test]
fn full_fine_tuning_learns_the_assistant_replies() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let out = tmp.path().join("full");
    let log = sft(&[
        "--model",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "40",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--val-fraction",
        "0.1",
    ]);
    assert!(
        log.contains("108 training conversations") && log.contains("12 held out"),
        "{log}"
    );
    let losses = train_losses(&out);
    assert_eq!(losses.len(), 40);
    let (first, last) = (
        losses[..5].iter().sum::<f64>() / 5.0,
        losses[35..].iter().sum::<f64>() / 5.0,
    );
    assert!(last < 0.6 * first, "loss {first:.3} -> {last:.3}");
    let m = LoadedModel::load(&out.join("model"), &Device::Cpu).unwrap();
    assert!(m.tokenizer.is_some() && out.join("model/tokenizer_config.json").exists());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"kind\":\"val\"") && metrics.contains("\"kind\":\"sample\""));
}

#[test]
fn lora_trains_adapters_only_and_merges_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let before = files_of(&base);
    let out = tmp.path().join("lora");
    sft(&[
        "--model",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "20",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-targets",
        "q_proj,v_proj,down_proj",
        "--merge",
    ]);
    assert_eq!(
        files_of(&base),
        before,
        "the base model's files are untouched"
    );
    let losses = train_losses(&out);
    assert!(losses[19] < losses[0], "{losses:?}");

    let adir = out.join("adapter");
    let acfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(acfg["r"], 4);
    assert_eq!(
        acfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    let bm = LoadedModel::load(&base, &Device::Cpu).unwrap();
    let (lcfg, _, adapter) = peft::load_adapter(&adir, &bm.cfg, &Device::Cpu).unwrap();
    // Exactly the adapter's tensors: r * (in + out) per adapted weight.
    let slots = lora::slots(&bm.cfg, &lcfg.targets).unwrap();
    let numel: usize = adapter.values().map(|t| t.elem_count()).sum();
    assert_eq!(numel, lora::param_count(&slots, 4));
    assert!(
        adapter
            .iter()
            .any(|(k, t)| k.contains("lora_B") && max_abs(t) > 0.0),
        "B trained"
    );

    // The merged model computes what base + adapter computes.
    let ids = Tensor::arange(0u32, 40, &Device::Cpu)
        .unwrap()
        .reshape((2, 20))
        .unwrap();
    let ad = lora::adapters(&bm.cfg, &lcfg, &adapter).unwrap();
    let with = Transformer::with_adapters(&bm.cfg, &bm.weights, ad)
        .unwrap()
        .forward(&ids, 0, None)
        .unwrap();
    let merged = LoadedModel::load(&out.join("model"), &Device::Cpu).unwrap();
    let m_logits = merged
        .transformer()
        .unwrap()
        .forward(&ids, 0, None)
        .unwrap();
    let d = max_abs_diff(&with, &m_logits);
    assert!(d < 1e-4, "merged vs base+adapter: {d}");
    let plain = bm.transformer().unwrap().forward(&ids, 0, None).unwrap();
    assert!(
        max_abs_diff(&plain, &with) > 1e-3,
        "the adapter changed the model"
    );
    // The adapter directory itself loads (merged on load) for chat/serve/eval.
    let via = LoadedModel::load(&adir, &Device::Cpu).unwrap();
    let dv = max_abs_diff(
        &via.transformer().unwrap().forward(&ids, 0, None).unwrap(),
        &with,
    );
    assert!(dv < 1e-4);
    assert_eq!(via.weights["h.0.attn.qkv.weight"].dtype(), DType::F32);
}

#[test]
fn lora_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let common = |out: &Path| -> Vec<String> {
        [
            "--model",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "10",
            "--batch-size",
            "4",
            "--lora-rank",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = tmp.path().join("straight");
    let a = common(&straight);
    sft(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let paused = tmp.path().join("paused");
    let mut b = common(&paused);
    b.extend(["--set".into(), "train.stop_at_step=5".into()]);
    sft(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!paused.join("adapter").exists());
    sft(&["--resume", paused.to_str().unwrap()]);
    assert_eq!(train_losses(&straight), train_losses(&paused));
    let w1 = candle_core::safetensors::load(
        straight.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let w2 = candle_core::safetensors::load(
        paused.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (k, t) in &w1 {
        assert_eq!(max_abs_diff(t, &w2[k]), 0.0, "{k}");
    }
}

#[test]
fn sft_input_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let out = tmp.path().join("x");
    let (b, d, o) = (
        base.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let fail = |args: &[&str], want: &[&str]| {
        let (code, _, err) = run(&[&["sft"], args].concat());
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!err.contains("panicked"), "{err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: expected '{w}' in: {err}");
        }
    };
    fail(
        &["--model", b, "--data", "/no/such.jsonl", "--out", o],
        &["/no/such.jsonl"],
    );
    fail(
        &[
            "--model",
            b,
            "--data",
            d,
            "--out",
            o,
            "--lora-rank",
            "4",
            "--lora-targets",
            "c_attn",
        ],
        &["c_attn", "q_proj"],
    );
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    fail(
        &["--model", b, "--data", bad.to_str().unwrap(), "--out", o],
        &["line 1", "no assistant message"],
    );
    fail(
        &[
            "--model",
            b,
            "--data",
            d,
            "--out",
            o,
            "--replace",
            "novalue",
        ],
        &["FROM=TO"],
    );
    assert!(
        !out.join("config.toml").exists(),
        "nothing written on failure"
    );
}
