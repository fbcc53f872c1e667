//! Small real training inputs made from tiny Shakespeare: token shards, and a base model with a
//! ChatML tokenizer plus chat data to fine-tune it on.

use super::shared_data;
use candle_core::Device;
use chatforge::data::chat::save_conversations;
use chatforge::data::synthetic::{generate, SyntheticTask};
use chatforge::data::{prepare, PrepareOptions};
use chatforge::formats::{save_model_dir, Library, ModelCard};
use chatforge::model::params::init_weights;
use chatforge::model::ModelConfig;
use chatforge::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The first `bytes` of tiny Shakespeare written to `dir/corpus.txt`.
fn corpus(dir: &Path, bytes: usize) -> PathBuf {
    let text = std::fs::read_to_string(shared_data().join("tinyshakespeare.txt")).unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text[..bytes]).unwrap();
    path
}

/// A data directory of the first `bytes` of tiny Shakespeare with a 512-token BPE, made once per
/// test binary and size (in the target's temporary folder).
pub fn shakespeare_shards(bytes: usize) -> PathBuf {
    static DIRS: Mutex<BTreeMap<usize, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|p| p.into_inner());
    dirs.entry(bytes)
        .or_insert_with(|| {
            let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("shards-{bytes}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let c = corpus(&root, bytes);
            let tok = Tokenizer::train(std::slice::from_ref(&c), 512).unwrap();
            prepare(&tok, &[c], &root.join("data"), &PrepareOptions::default()).unwrap();
            root.join("data")
        })
        .clone()
}

/// A 2-layer Llama (context 96) with a 512-token ChatML tokenizer in `tmp/base`, and 120 spelling
/// conversations in `tmp/spell.jsonl` to tune it on.
pub fn chat_base_and_data(tmp: &Path) -> (PathBuf, PathBuf) {
    let tok = Tokenizer::train(&[corpus(tmp, 200_000)], 512).unwrap();
    let mut cfg = ModelConfig::preset("tiny-llama", Some(512), Some(96)).unwrap();
    cfg.n_layer = 2;
    let w = init_weights(&cfg, 3, &Device::Cpu).unwrap();
    let base = tmp.join("base");
    let card = ModelCard::new("base", &cfg, Library::Transformers, "A test base model.");
    save_model_dir(&base, &cfg, &w, Some(&tok), &card).unwrap();
    let (train, _) = generate(SyntheticTask::Spelling, 120, 0, 5);
    let data = tmp.join("spell.jsonl");
    save_conversations(&data, &train).unwrap();
    (base, data)
}

/// The base model of [`chat_base_and_data`] also as a Q8_0 GGUF file beside it (`base.gguf`).
pub fn chat_base_gguf(base: &Path) -> PathBuf {
    let m = chatforge::formats::LoadedModel::load(base, &Device::Cpu).unwrap();
    let path = base.with_file_name("base.gguf");
    let tok = m.tokenizer.as_ref().unwrap();
    let q8 = candle_core::quantized::GgmlDType::Q8_0;
    chatforge::formats::gguf_export::save_gguf(&path, &m.cfg, &m.weights, tok, q8, "base").unwrap();
    path
}

/// The model of [`chat_base_and_data`] and preference pairs of its spelling task: the spelling
/// preferred over a refusal (`pairs.jsonl`, TRL's prompt/chosen/rejected records).
pub fn chat_base_and_pairs(tmp: &Path) -> (PathBuf, PathBuf) {
    let (base, data) = chat_base_and_data(tmp);
    let convs: Vec<serde_json::Value> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut out = String::new();
    for c in &convs {
        let rec = serde_json::json!({
            "prompt": c["messages"][0]["content"],
            "chosen": c["messages"][1]["content"],
            "rejected": "I cannot spell that word, sorry.",
        });
        out.push_str(&format!("{rec}\n"));
    }
    let pairs = tmp.join("pairs.jsonl");
    std::fs::write(&pairs, out).unwrap();
    (base, pairs)
}
