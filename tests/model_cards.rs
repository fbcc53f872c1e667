//! Model cards in every saved model directory, and adapters whose base PEFT can load: a LoRA run
//! over a GGUF base writes the base's HF conversion and names it; `--base-id` names a Hub id.

mod common;

use candle_core::Device;
use chatforge::formats::LoadedModel;
use common::*;
use std::path::Path;

fn sft(args: &[&str]) {
    let (code, out, err) = run(&[&["sft"], args].concat());
    assert_eq!(code, 0, "sft failed:\n{out}\n{err}");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap()
}

/// The YAML front matter of a card (between the first two `---` lines).
fn front_matter(card: &str) -> &str {
    let rest = card
        .strip_prefix("---\n")
        .expect("a card starts with front matter");
    &rest[..rest.find("\n---\n").expect("the front matter ends")]
}

#[test]
fn a_fine_tuned_model_has_a_card_with_its_licence_data_and_validation_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let out = tmp.path().join("spell-sft");
    sft(&[
        "--model",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "4",
        "--base-id",
        "example-org/tiny-base",
        "--set",
        "model.license=mit",
    ]);
    let card = read(&out.join("model/README.md"));
    let fm = front_matter(&card);
    for line in [
        "license: \"mit\"",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "base_model: \"example-org/tiny-base\"",
        "- \"sft\"",
        "- name: \"spell-sft\"",
        "    - type: \"loss\"",
    ] {
        assert!(fm.lines().any(|l| l == line), "no `{line}` in:\n{fm}");
    }
    // The model-index holds the run's last validation loss, as metrics.jsonl has it.
    let val = read(&out.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["kind"] == "val")
        .expect("a validation record")["val_loss"]
        .as_f64()
        .unwrap();
    let lines: Vec<&str> = fm.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "    - type: \"loss\"")
        .unwrap();
    let value: f64 = lines[at + 1]
        .trim()
        .strip_prefix("value: ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(value, val);
    // The summary says what the model is and what it was trained on.
    assert!(card.contains("Fine-tuned on conversations by chatforge (every weight)"));
    assert!(card.contains(data.to_str().unwrap()));
    assert!(card.contains("4 optimizer steps"));

    // A conversion keeps the licence of the model it converts.
    let hf = tmp.path().join("converted");
    let (code, _, err) = run(&[
        "convert",
        "--input",
        out.join("model").to_str().unwrap(),
        "--output",
        hf.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let converted = read(&hf.join("README.md"));
    assert!(front_matter(&converted).contains("license: \"mit\""));
    assert!(converted.contains("Converted by chatforge from"));
}

#[test]
fn lora_over_a_gguf_base_names_an_hf_directory_or_the_hub_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let gguf = chat_base_gguf(&base);
    let lora = |out: &Path, extra: &[&str]| {
        let args = [
            "--model",
            gguf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
            "--lora-rank",
            "4",
        ];
        sft(&[&args[..], extra].concat());
    };

    // Without a Hub id: the GGUF's weights as an HF directory beside the adapter, named by its
    // absolute path (what PEFT's AutoPeftModelForCausalLM loads).
    let out = tmp.path().join("run");
    lora(&out, &[]);
    let written = out.join("base_model");
    let acfg = json(&out.join("adapter/adapter_config.json"));
    assert_eq!(
        acfg["base_model_name_or_path"],
        std::path::absolute(&written).unwrap().to_str().unwrap()
    );
    let from_gguf = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
    let from_dir = LoadedModel::load(&written, &Device::Cpu).unwrap();
    assert_eq!(from_dir.cfg, from_gguf.cfg);
    let (a, b) = (from_gguf.f32_weights().unwrap(), from_dir.weights);
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(max_abs_diff(t, &b[name]), 0.0, "{name}");
    }
    assert!(written.join("tokenizer.json").exists());
    // chatforge loads the adapter through the name it wrote.
    LoadedModel::load(&out.join("adapter"), &Device::Cpu).unwrap();
    let card = read(&out.join("adapter/README.md"));
    assert!(front_matter(&card).contains("library_name: peft"));
    assert!(front_matter(&card).contains("- \"lora\""));
    assert!(
        !front_matter(&card).contains("base_model:"),
        "a local base is no Hub id"
    );

    // With --base-id: the Hub id, in the adapter config and the card, and no conversion.
    let out = tmp.path().join("run-id");
    lora(&out, &["--base-id", "HuggingFaceTB/SmolLM2-135M"]);
    assert!(!out.join("base_model").exists());
    let acfg = json(&out.join("adapter/adapter_config.json"));
    assert_eq!(
        acfg["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M"
    );
    let card = read(&out.join("adapter/README.md"));
    assert!(front_matter(&card).contains("base_model: \"HuggingFaceTB/SmolLM2-135M\""));

    // A base id that is no Hub id is refused before anything is trained.
    let bad = tmp.path().join("run-bad");
    let (code, _, err) = run(&[
        "sft",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        bad.to_str().unwrap(),
        "--base-id",
        "../models/x",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("model.base_id '../models/x' is not a Hugging Face Hub id"),
        "{err}"
    );
    assert!(!bad.exists());
}
