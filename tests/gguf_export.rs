//! `chatforge convert --output FILE.gguf`: the files read back with candle's GGUF reader (the
//! metadata llama.cpp needs, every tensor under its llama.cpp name, type and layout) and with our
//! own loader (the same weights and token ids); a Q4_1 GGUF through an HF directory and back gives
//! the original tensors bit for bit; the Ollama Modelfile; and the errors.
//! (llama.cpp itself loading these files and decoding as we do: tools/check_gguf_export.sh.)

mod common;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use chatforge::formats::{save_model_dir, Library, LoadedModel, ModelCard};
use chatforge::model::params::init_weights;
use chatforge::model::ModelConfig;
use chatforge::tokenizer::Tokenizer;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A 512-token ChatML tokenizer trained on tiny Shakespeare.
fn tokenizer(dir: &Path) -> Tokenizer {
    let text = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, &text[..200_000]).unwrap();
    Tokenizer::train(&[corpus], 512).unwrap()
}

/// A model of `cfg` with random weights and `tok`, saved as an HF directory `dir/name`.
fn model_dir(dir: &Path, name: &str, cfg: &ModelConfig, tok: &Tokenizer) -> PathBuf {
    let w = init_weights(cfg, 7, &Device::Cpu).unwrap();
    let out = dir.join(name);
    let card = ModelCard::new("hf", cfg, Library::Transformers, "A test conversion.");
    save_model_dir(&out, cfg, &w, Some(tok), &card).unwrap();
    out
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend(extra);
    let (code, _, err) = run(&args);
    (code, err)
}

fn read_gguf(path: &Path) -> (Content, std::fs::File) {
    let mut f = std::fs::File::open(path).unwrap();
    (Content::read(&mut f).unwrap(), f)
}

fn tensor(c: &Content, f: &mut std::fs::File, name: &str) -> Tensor {
    c.tensor(f, name, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .dequantize(&Device::Cpu)
        .unwrap()
}

fn meta<'a>(c: &'a Content, key: &str) -> &'a Value {
    c.metadata
        .get(key)
        .unwrap_or_else(|| panic!("missing metadata {key}"))
}

fn u32_of(c: &Content, key: &str) -> u32 {
    meta(c, key).to_u32().unwrap()
}

fn weights(path: &Path) -> BTreeMap<String, Tensor> {
    LoadedModel::load(path, &Device::Cpu)
        .unwrap()
        .f32_weights()
        .unwrap()
}

#[test]
fn a_llama_model_exports_as_llama_cpp_reads_it_and_loads_back_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path());
    // Grouped-query attention, and 32 more embedding rows than tokens (padded in the file).
    let mut cfg = ModelConfig::preset("tiny-llama", Some(544), Some(128)).unwrap();
    cfg.n_layer = 2;
    let dir = model_dir(tmp.path(), "llama", &cfg, &tok);
    let gguf = tmp.path().join("llama-f32.gguf");
    let (code, err) = convert(&dir, &gguf, &["--type", "f32", "--name", "tiny"]);
    assert_eq!(code, 0, "{err}");

    let (c, mut f) = read_gguf(&gguf);
    assert_eq!(
        meta(&c, "general.architecture").to_string().unwrap(),
        "llama"
    );
    assert_eq!(meta(&c, "general.name").to_string().unwrap(), "tiny");
    assert_eq!(u32_of(&c, "general.file_type"), 0);
    for (key, want) in [
        ("llama.block_count", 2),
        ("llama.context_length", 128),
        ("llama.embedding_length", 192),
        ("llama.feed_forward_length", 512),
        ("llama.attention.head_count", 6),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 32),
        ("llama.vocab_size", 544),
    ] {
        assert_eq!(u32_of(&c, key), want, "{key}");
    }
    assert_eq!(
        meta(&c, "tokenizer.ggml.model").to_string().unwrap(),
        "gpt2"
    );
    assert_eq!(meta(&c, "tokenizer.ggml.pre").to_string().unwrap(), "gpt-2");
    assert!(!meta(&c, "tokenizer.ggml.add_bos_token").to_bool().unwrap());
    let tokens = meta(&c, "tokenizer.ggml.tokens").to_vec().unwrap();
    let types = meta(&c, "tokenizer.ggml.token_type").to_vec().unwrap();
    assert_eq!((tokens.len(), types.len()), (544, 544));
    let im_end = tok.token_id("<|im_end|>").unwrap() as usize;
    assert_eq!(tokens[im_end].to_string().unwrap(), "<|im_end|>");
    assert_eq!(types[im_end].to_i32().unwrap(), 3, "control token");
    assert_eq!(tokens[530].to_string().unwrap(), "[PAD530]");
    assert_eq!(types[530].to_i32().unwrap(), 5, "unused");
    assert_eq!(u32_of(&c, "tokenizer.ggml.eos_token_id"), im_end as u32);
    let template = meta(&c, "tokenizer.chat_template").to_string().unwrap();
    assert!(template.contains("<|im_start|>"), "{template}");
    // 2 layers of 9 tensors, the embedding and the final norm; tied, so no output.weight.
    assert_eq!(c.tensor_infos.len(), 2 * 9 + 2);
    assert!(!c.tensor_infos.contains_key("output.weight"));
    let q = &c.tensor_infos["blk.1.attn_q.weight"];
    assert_eq!(q.ggml_dtype, GgmlDType::F32);
    assert_eq!(q.shape.dims(), [192, 192]);
    assert_eq!(
        c.tensor_infos["blk.0.attn_k.weight"].shape.dims(),
        [64, 192]
    );

    // llama.cpp's q/k row order: row 2i+1 of a head is row i + D/2 of ours.
    let ours = weights(&dir);
    let qkv = &ours["h.0.attn.qkv.weight"];
    let k_file = tensor(&c, &mut f, "blk.0.attn_k.weight");
    let k_ours = qkv.narrow(0, 192, 64).unwrap();
    let row = |t: &Tensor, r: usize| t.get(r).unwrap();
    assert_eq!(
        max_abs_diff(&row(&k_file, 32 + 1), &row(&k_ours, 32 + 16)),
        0.0
    );
    assert_eq!(
        max_abs_diff(&row(&k_file, 32 + 2), &row(&k_ours, 32 + 1)),
        0.0
    );

    // Loaded back by chatforge: the same weights bit for bit, the same token ids.
    let back = weights(&gguf);
    for (name, t) in &ours {
        assert_eq!(max_abs_diff(t, &back[name]), 0.0, "{name}");
    }
    let loaded = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
    let text = "<|im_start|>user\nWherefore art thou, Romeo?<|im_end|>\n  Tis 1599.";
    assert_eq!(
        loaded.tokenizer.unwrap().encode(text).unwrap(),
        tok.encode(text).unwrap()
    );

    // f16 and Q8_0: the matrices take the type, norms stay f32, values within the type's step.
    for (ty, tol) in [("f16", 1e-3), ("q8_0", 0.02)] {
        let out = tmp.path().join(format!("llama-{ty}.gguf"));
        let (code, err) = convert(&dir, &out, &["--type", ty]);
        assert_eq!(code, 0, "{err}");
        let (c, _) = read_gguf(&out);
        let want = if ty == "f16" {
            GgmlDType::F16
        } else {
            GgmlDType::Q8_0
        };
        assert_eq!(c.tensor_infos["blk.0.ffn_gate.weight"].ggml_dtype, want);
        assert_eq!(c.tensor_infos["token_embd.weight"].ggml_dtype, want);
        assert_eq!(
            c.tensor_infos["blk.0.attn_norm.weight"].ggml_dtype,
            GgmlDType::F32
        );
        let back = weights(&out);
        for (name, t) in &ours {
            let d = max_abs_diff(t, &back[name]);
            assert!(d <= tol * max_abs(t).max(1.0), "{ty} {name}: {d}");
        }
    }
}

#[test]
fn a_gpt2_model_exports_as_llama_cpp_s_gpt2_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path());
    let mut cfg = ModelConfig::preset("tiny", Some(512), Some(64)).unwrap();
    cfg.n_layer = 2;
    let dir = model_dir(tmp.path(), "gpt2", &cfg, &tok);
    let gguf = tmp.path().join("gpt2.gguf");
    let (code, err) = convert(&dir, &gguf, &["--type", "q4_1"]);
    assert_eq!(code, 0, "{err}");
    let (c, mut f) = read_gguf(&gguf);
    assert_eq!(
        meta(&c, "general.architecture").to_string().unwrap(),
        "gpt2"
    );
    assert_eq!(u32_of(&c, "general.file_type"), 3);
    assert_eq!(u32_of(&c, "gpt2.block_count"), 2);
    assert_eq!(u32_of(&c, "gpt2.context_length"), 64);
    assert_eq!(u32_of(&c, "gpt2.feed_forward_length"), 4 * 192);
    let eps = meta(&c, "gpt2.attention.layer_norm_epsilon")
        .to_f32()
        .unwrap();
    assert_eq!(eps, 1e-5);
    let dtype = |n: &str| c.tensor_infos[n].ggml_dtype;
    assert_eq!(dtype("blk.1.attn_qkv.weight"), GgmlDType::Q4_1);
    assert_eq!(dtype("blk.1.ffn_up.weight"), GgmlDType::Q4_1);
    assert_eq!(dtype("blk.1.ffn_up.bias"), GgmlDType::F32);
    // 4-bit files give the embedding more bits; positions stay f32.
    assert_eq!(dtype("token_embd.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype("position_embd.weight"), GgmlDType::F32);
    assert_eq!(
        c.tensor_infos["blk.0.attn_qkv.weight"].shape.dims(),
        [576, 192]
    );
    assert_eq!(c.tensor_infos.len(), 2 + 2 * 12 + 2);

    let ours = weights(&dir);
    for (file, internal) in [
        ("position_embd.weight", "wpe.weight"),
        ("blk.0.attn_qkv.bias", "h.0.attn.qkv.bias"),
        ("output_norm.bias", "ln_f.bias"),
    ] {
        let d = max_abs_diff(&tensor(&c, &mut f, file), &ours[internal]);
        assert_eq!(d, 0.0, "{file}");
    }
    // Q4_1: within half a step of each block's range (the weights are ~N(0, 0.02)).
    let d = max_abs_diff(
        &tensor(&c, &mut f, "blk.0.ffn_down.weight"),
        &ours["h.0.mlp.proj.weight"],
    );
    assert!(d < 0.02, "{d}");
    let back = weights(&gguf);
    for (name, t) in &ours {
        let d = max_abs_diff(t, &back[name]);
        assert!(d < 0.02, "{name}: {d}");
    }

    // In f32, chatforge reads the gpt2 architecture back bit for bit, tokenizer and all.
    let f32_file = tmp.path().join("gpt2-f32.gguf");
    let (code, err) = convert(&dir, &f32_file, &["--type", "f32"]);
    assert_eq!(code, 0, "{err}");
    let loaded = LoadedModel::load(&f32_file, &Device::Cpu).unwrap();
    // The same config, with the special ids the file names.
    let mut want = LoadedModel::load(&dir, &Device::Cpu).unwrap().cfg;
    want.bos_token_id = tok.token_id("<|endoftext|>");
    want.eos_token_id = tok.token_id("<|im_end|>");
    assert_eq!(loaded.cfg, want);
    let back = loaded.f32_weights().unwrap();
    for (name, t) in &ours {
        assert_eq!(max_abs_diff(t, &back[name]), 0.0, "{name}");
    }
    let text = "Is this a dagger which I see before me, 2 or 3?";
    assert_eq!(
        loaded.tokenizer.unwrap().encode(text).unwrap(),
        tok.encode(text).unwrap()
    );
}

/// Every tensor of `a` and `b`: the same names, types, shapes and bytes.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (ca, mut fa) = read_gguf(a);
    let (cb, mut fb) = read_gguf(b);
    let names = |c: &Content| c.tensor_infos.keys().cloned().collect::<Vec<_>>();
    let (mut na, mut nb) = (names(&ca), names(&cb));
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    for n in &na {
        let qa = ca.tensor(&mut fa, n, &Device::Cpu).unwrap();
        let qb = cb.tensor(&mut fb, n, &Device::Cpu).unwrap();
        assert_eq!(qa.dtype(), qb.dtype(), "{n}");
        assert_eq!(qa.shape(), qb.shape(), "{n}");
        assert!(
            qa.data().unwrap() == qb.data().unwrap(),
            "{n}: bytes differ"
        );
    }
}

#[test]
fn smollm2_q4_1_through_an_hf_directory_and_back_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let original = shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let hf = tmp.path().join("smollm2-hf");
    let (code, err) = convert(&original, &hf, &[]);
    assert_eq!(code, 0, "{err}");
    let back = tmp.path().join("smollm2.gguf");
    let (code, err) = convert(&hf, &back, &["--type", "q4_1", "--ollama"]);
    assert_eq!(code, 0, "{err}");
    assert_same_tensors(&original, &back);
    let (c, _) = read_gguf(&back);
    assert_eq!(u32_of(&c, "llama.attention.head_count_kv"), 3);
    let rope = meta(&c, "llama.rope.freq_base").to_f32().unwrap();
    assert_eq!(rope, 100_000.0);

    let modelfile = std::fs::read_to_string(tmp.path().join("Modelfile")).unwrap();
    assert!(
        modelfile.starts_with("FROM ./smollm2.gguf\n"),
        "{modelfile}"
    );
    assert!(modelfile.contains("TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}\n"));
    assert!(modelfile.contains(
        "SYSTEM \"\"\"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\"\""
    ));
    assert!(modelfile.contains("PARAMETER stop \"<|im_end|>\""));
}

#[test]
fn bad_export_requests_are_refused_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer(tmp.path());
    let mut cfg = ModelConfig::preset("tiny-llama", Some(512), Some(64)).unwrap();
    cfg.n_layer = 1;
    let dir = model_dir(tmp.path(), "m", &cfg, &tok);

    // GGUF options on a directory output.
    let (code, err) = convert(&dir, &tmp.path().join("out"), &["--type", "q8_0"]);
    assert_ne!(code, 0);
    assert!(err.contains("give --output a .gguf name"), "{err}");
    let (code, err) = convert(&dir, &tmp.path().join("x.gguf"), &["--type", "q3_k"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("expected f32, f16, bf16, q8_0, q4_0 or q4_1"),
        "{err}"
    );

    // An existing file is kept unless --force.
    let existing = tmp.path().join("keep.gguf");
    std::fs::write(&existing, b"mine").unwrap();
    let (code, err) = convert(&dir, &existing, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"mine");
    let (code, err) = convert(&dir, &existing, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read_gguf(&existing).0.tensor_infos.len(), 9 + 2);

    // --ollama needs a chat template it can translate, and then writes nothing at all.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(e.path(), plain.join(e.file_name())).unwrap();
    }
    let cfg_path = plain.join("tokenizer_config.json");
    let mut tc = chatforge::fsutil::read_json(&cfg_path).unwrap();
    tc["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}".into();
    std::fs::write(&cfg_path, tc.to_string()).unwrap();
    let sub = tmp.path().join("ollama");
    std::fs::create_dir_all(&sub).unwrap();
    let (code, err) = convert(&plain, &sub.join("m.gguf"), &["--ollama"]);
    assert_ne!(code, 0);
    assert!(err.contains("not ChatML"), "{err}");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}
