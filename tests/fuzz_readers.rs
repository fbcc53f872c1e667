//! Mutation fuzzing (proptest) of every reader of untrusted files: the GGUF header, an HF model
//! directory (config.json + safetensors) and token shards. Each input is a valid file with random
//! bytes overwritten, random 64-bit values planted, random JSON numbers replaced, and a random
//! truncation; each must give Ok or an error, never a panic or an allocation beyond a bound (the
//! test binary's allocator refuses anything larger, which aborts the run loudly).
//!
//! `CHATFORGE_FUZZ_CASES=N` sets the cases per target (default 500 in the suite; the closing note of
//! the reliability issue reports a run of a million).

mod common;

use candle_core::Device;
use chatforge::data::shard::{write_shard, TokenShard, TokenWidth};
use common::tiny_gguf::write_gguf;
use common::*;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;

/// No single allocation may exceed this: the inputs are a few kilobytes, so anything near it is
/// an allocation sized by a corrupt header.
const ALLOCATION_BOUND: usize = 1 << 30;

struct Bounded;

// SAFETY: forwards to the system allocator; refuses (null) what is over the bound.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BOUND {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BOUND {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

fn cases() -> u32 {
    std::env::var("CHATFORGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Values that break size arithmetic when planted in a header.
fn nasty_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(1 << 40),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
struct Mutation {
    bytes: Vec<(usize, u8)>,
    words: Vec<(usize, u64)>,
    keep: Option<usize>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        prop::collection::vec((any::<usize>(), nasty_u64()), 0..4),
        prop::option::weighted(0.2, any::<usize>()),
    )
        .prop_map(|(bytes, words, keep)| Mutation { bytes, words, keep })
}

/// Applies `m` to `data`, with offsets biased towards the first `hot` bytes (the header).
fn mutate(data: &[u8], m: &Mutation, hot: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    let at = |o: usize, d: &Vec<u8>| {
        let span = if o.is_multiple_of(4) {
            d.len()
        } else {
            hot.min(d.len())
        };
        o % span.max(1)
    };
    for &(o, b) in &m.bytes {
        let i = at(o, &d);
        d[i] = b;
    }
    for &(o, w) in &m.words {
        let i = at(o, &d).min(d.len().saturating_sub(8));
        d[i..i + 8].copy_from_slice(&w.to_le_bytes());
    }
    if let Some(k) = m.keep {
        d.truncate(k % (d.len() + 1));
    }
    d
}

#[test]
fn gguf_header_reader_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("seed.gguf");
    write_gguf(&path, &[]);
    let seed = std::fs::read(&path).unwrap();
    assert!(chatforge::formats::gguf_header::read_header(&seed).is_ok());
    let config = ProptestConfig::with_cases(cases());
    proptest!(config, |(m in mutation())| {
        let d = mutate(&seed, &m, 2048);
        let _ = chatforge::formats::gguf_header::read_header(&d);
    });
}

#[test]
fn gguf_model_loading_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let seed_path = tmp.path().join("seed.gguf");
    write_gguf(&seed_path, &[]);
    let seed = std::fs::read(&seed_path).unwrap();
    let path = tmp.path().join("case.gguf");
    let config = ProptestConfig::with_cases(cases() / 10 + 1);
    proptest!(config, |(m in mutation())| {
        std::fs::write(&path, mutate(&seed, &m, 2048)).unwrap();
        let _ = chatforge::formats::LoadedModel::load(&path, &Device::Cpu);
    });
}

/// config.json values a crafted file might hold.
fn nasty_json_number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(2147483648u64)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(3)),
        Just(serde_json::json!("7")),
        Just(serde_json::Value::Null),
    ]
}

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn hf_model_directory_loading_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in ["gpt2-tiny-eval", "llama-tiny"] {
        let dir = tmp.path().join(fixture);
        copy_fixture(fixture, &dir);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let keys: Vec<String> = cfg.as_object().unwrap().keys().cloned().collect();
        let weights = std::fs::read(fixtures().join(fixture).join("model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        let config = ProptestConfig::with_cases(cases() / 2 + 1);
        proptest!(config, |(
            fields in prop::collection::vec((any::<prop::sample::Index>(), nasty_json_number()), 0..3),
            m in mutation(),
        )| {
            let mut c = cfg.clone();
            for (k, v) in &fields {
                c[k.get(&keys).as_str()] = v.clone();
            }
            std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
            std::fs::write(dir.join("model.safetensors"), mutate(&weights, &m, header)).unwrap();
            let _ = chatforge::formats::LoadedModel::load(&dir, &Device::Cpu);
        });
    }
}

#[test]
fn token_shard_reader_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let seed_path = tmp.path().join("seed.bin");
    let tokens: Vec<u32> = (0..300).map(|i| (i * 37) % 500).collect();
    write_shard(&seed_path, &tokens, TokenWidth::U16).unwrap();
    let seed = std::fs::read(&seed_path).unwrap();
    let path = tmp.path().join("train_000000.bin");
    let config = ProptestConfig::with_cases(cases());
    proptest!(config, |(m in mutation())| {
        std::fs::write(&path, mutate(&seed, &m, 1024)).unwrap();
        if let Ok(s) = TokenShard::open(&path) {
            let mut out = Vec::new();
            s.read_into(0, s.len(), &mut out);
            prop_assert_eq!(out.len(), s.len());
            let set = chatforge::data::ShardSet::open(tmp.path(), &["train_000000.bin".into()], 16)
                .unwrap()
                .with_vocab(512);
            let _ = set.check_all_ids();
        }
    });
}
