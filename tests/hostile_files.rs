//! Crafted or damaged model files are errors that name the file and the field, never an abort, a
//! panic or an allocation sized by the file's claims: huge context or layer counts, zero heads, a
//! zero alignment, integer-typed or non-finite weights, truncation.

mod common;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use common::tiny_gguf::write_gguf;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A metadata key and its new value (None: removed).
type MetaChange = (&'static str, Option<Value>);

fn assert_refused((code, _, err): (i32, String, String), needles: &[&str]) {
    assert_ne!(code, 0, "expected a failure: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

fn generate(model: &Path) -> (i32, String, String) {
    run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "ab",
        "--max-tokens",
        "2",
        "--temperature",
        "0",
    ])
}

#[test]
fn crafted_gguf_headers_are_errors_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.gguf");
    write_gguf(&good, &[]);
    let (code, _, err) = generate(&good);
    assert_eq!(code, 0, "the unmodified file loads: {err}");

    let cases: Vec<(&str, Vec<MetaChange>, &[&str])> = vec![
        (
            "context",
            vec![("llama.context_length", Some(Value::U32(1 << 31)))],
            &["llama.context_length", "2147483648"],
        ),
        (
            "layers",
            vec![("llama.block_count", Some(Value::U32(1 << 31)))],
            &["llama.block_count"],
        ),
        (
            "layers-disagree",
            vec![("llama.block_count", Some(Value::U32(3)))],
            &["llama.block_count", "2 layers"],
        ),
        (
            "heads",
            vec![("llama.attention.head_count", Some(Value::U32(0)))],
            &["llama.attention.head_count"],
        ),
        (
            "negative",
            vec![("llama.feed_forward_length", Some(Value::I32(-48)))],
            &["llama.feed_forward_length", "non-negative"],
        ),
        (
            "alignment",
            vec![("general.alignment", Some(Value::U32(0)))],
            &["general.alignment", "power of two"],
        ),
    ];
    for (name, meta, needles) in cases {
        let p = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&p, &meta);
        assert_refused(generate(&p), needles);
    }

    // Cut short inside the tensor data, and inside the header.
    let bytes = std::fs::read(&good).unwrap();
    for (name, keep) in [("short-data", bytes.len() - 100), ("short-header", 200)] {
        let p = tmp.path().join(format!("{name}.gguf"));
        std::fs::write(&p, &bytes[..keep]).unwrap();
        assert_refused(generate(&p), &[p.to_str().unwrap(), "truncated"]);
    }
}

/// `convert` of `model` into a fresh directory under `tmp`.
fn convert(model: &Path, tmp: &Path) -> (i32, String, String) {
    let out = tmp.join("converted");
    run(&[
        "convert",
        "--input",
        model.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ])
}

/// A copy of an HF fixture with `config.json` patched and/or one tensor replaced.
fn patched_model(
    tmp: &Path,
    fixture: &str,
    config: &[(&str, serde_json::Value)],
    tensor: Option<(&str, Tensor)>,
) -> PathBuf {
    let out = tmp.join(format!(
        "{fixture}-{}",
        config.len() + tensor.is_some() as usize
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(fixtures().join(fixture))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (k, v) in config {
        cfg[*k] = v.clone();
    }
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    if let Some((name, t)) = tensor {
        let st = out.join("model.safetensors");
        let mut all: HashMap<String, Tensor> =
            candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
        all.insert(name.to_string(), t);
        candle_core::safetensors::save(&all, &st).unwrap();
    }
    out
}

#[test]
fn crafted_config_json_and_weights_are_errors_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let m = patched_model(
        tmp.path(),
        "llama-tiny",
        &[("max_position_embeddings", 2147483648u64.into())],
        None,
    );
    assert_refused(
        convert(&m, tmp.path()),
        &["config.json", "max_position_embeddings", "2147483648"],
    );
    let m = patched_model(tmp.path(), "gpt2-tiny-eval", &[("n_head", 0.into())], None);
    assert_refused(generate(&m), &["config.json", "n_head"]);
    let m = patched_model(
        tmp.path(),
        "llama-tiny",
        &[("num_hidden_layers", 100000.into())],
        None,
    );
    assert_refused(convert(&m, tmp.path()), &["num_hidden_layers"]);

    // A shard index that points outside its directory is not followed.
    let m = patched_model(tmp.path(), "gpt2-tiny-eval", &[("n_embd", 32.into())], None);
    std::fs::rename(
        m.join("model.safetensors"),
        tmp.path().join("elsewhere.safetensors"),
    )
    .unwrap();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}"#,
    )
    .unwrap();
    assert_refused(generate(&m), &["weight_map", "../elsewhere.safetensors"]);

    // Integer weights: refused by name, not cast.
    let st = candle_core::safetensors::load(
        fixtures().join("gpt2-tiny-eval/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (name, w) = st.iter().find(|(n, _)| n.ends_with("ln_f.weight")).unwrap();
    let ints = w.to_dtype(DType::I64).unwrap();
    let m = patched_model(tmp.path(), "gpt2-tiny-eval", &[], Some((name, ints)));
    assert_refused(generate(&m), &[name, "I64"]);

    // A NaN weight: the loader names it (eval used to print {"loss": null} and exit 0).
    let mut v = w.to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    let nan = Tensor::new(v, &Device::Cpu).unwrap();
    let m = patched_model(
        tmp.path(),
        "gpt2-tiny-eval",
        &[("n_ctx", 64.into())],
        Some((name, nan)),
    );
    let text = fixtures().join("eval_text.txt");
    assert_refused(
        run(&[
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--json",
        ]),
        &[name, "NaN"],
    );
}
