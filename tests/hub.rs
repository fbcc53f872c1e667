//! Models and data by name from the Hugging Face Hub, through the real download code against a
//! local server shaped like the Hub: sharded safetensors, a GGUF file, a data file, the cache
//! reused without the network, a cut connection resumed, and the errors (no such repository, a
//! gated one without or with a wrong token, no network, a stalled download, offline and uncached).

mod common;

use candle_core::Device;
use chatforge::formats::LoadedModel;
use common::hub_server::{HubRepo, HubServer};
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// chatforge with the Hub at `endpoint` and its cache in `home`, plus `env`.
fn hub_run(endpoint: &str, home: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut c = chatforge_command();
    c.args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("chatforge runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `convert --input INPUT --output OUT` with the Hub at `hub`; it must succeed. Returns stderr.
fn convert(hub: &HubServer, home: &Path, env: &[(&str, &str)], input: &str, out: &Path) -> String {
    let args = [
        "convert",
        "--input",
        input,
        "--output",
        out.to_str().unwrap(),
    ];
    let (code, err) = hub_run(&hub.endpoint, home, env, &args);
    assert_eq!(code, 0, "{err}");
    err
}

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The model directory's files with its weights split into two shards and an index.
fn sharded(dir: &Path, tmp: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = files_of(dir);
    files.remove("model.safetensors");
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let names: Vec<&String> = w.keys().collect();
    let mut map = serde_json::Map::new();
    for (i, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let part: HashMap<String, candle_core::Tensor> =
            half.iter().map(|n| ((*n).clone(), w[*n].clone())).collect();
        let p = tmp.join(&shard);
        candle_core::safetensors::save(&part, &p).unwrap();
        files.insert(shard.clone(), std::fs::read(&p).unwrap());
        for n in half {
            map.insert((*n).clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    files.insert(
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    files
}

fn same_weights(a: &Path, b: &Path) {
    let (a, b) = (
        LoadedModel::load(a, &Device::Cpu).unwrap(),
        LoadedModel::load(b, &Device::Cpu).unwrap(),
    );
    assert_eq!(a.cfg, b.cfg);
    let (wa, wb) = (a.f32_weights().unwrap(), b.f32_weights().unwrap());
    assert_eq!(wa.len(), wb.len());
    for (n, t) in &wa {
        assert_eq!(max_abs_diff(t, &wb[n]), 0.0, "{n}");
    }
}

#[test]
fn models_and_data_come_by_name_and_the_cache_serves_them_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, chats) = chat_base_and_data(tmp.path());
    let gguf = chat_base_gguf(&base);
    let text = "To be, or not to be, that is the question.\n".repeat(200);
    let repos = BTreeMap::from([
        (
            "test-org/tiny-chat".to_string(),
            HubRepo {
                files: sharded(&base, tmp.path()),
                ..Default::default()
            },
        ),
        (
            "test-org/tiny-GGUF".to_string(),
            HubRepo {
                files: BTreeMap::from([
                    ("tiny.Q8_0.gguf".to_string(), std::fs::read(&gguf).unwrap()),
                    ("README.md".into(), b"# GGUF".to_vec()),
                ]),
                ..Default::default()
            },
        ),
        (
            "datasets/test-org/texts".to_string(),
            HubRepo {
                files: BTreeMap::from([("data/hamlet.txt".to_string(), text.clone().into_bytes())]),
                ..Default::default()
            },
        ),
    ]);
    let hub = HubServer::start(repos);
    let home = tmp.path().join("hf");

    // A sharded model by name: downloaded into the standard cache, loaded as the original.
    let copy = tmp.path().join("copy");
    let err = convert(&hub, &home, &[], "test-org/tiny-chat", &copy);
    same_weights(&copy, &base);
    let snapshot = home
        .join("hub/models--test-org--tiny-chat/snapshots/0123456789abcdef0123456789abcdef01234567");
    for f in [
        "config.json",
        "tokenizer.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "README.md",
    ] {
        assert!(snapshot.join(f).exists(), "{f} is not in the cache");
    }
    assert!(
        err.contains("downloading test-org/tiny-chat/model-00001-of-00002.safetensors"),
        "{err}"
    );

    // Again, and offline: from the cache, without one request.
    let before = hub.requests().len();
    for env in [&[][..], &[("HF_HUB_OFFLINE", "1")][..]] {
        let out = tmp.path().join(format!("again-{}", env.len()));
        convert(&hub, &home, env, "test-org/tiny-chat", &out);
    }
    assert_eq!(
        hub.requests().len(),
        before,
        "the cached model was fetched again"
    );

    // LoRA on a base by name: the adapter names the Hub id (PEFT fetches it itself), and
    // chatforge loads the adapter through the cache, offline.
    let run_dir = tmp.path().join("lora");
    let (code, err) = hub_run(
        &hub.endpoint,
        &home,
        &[],
        &[
            "sft",
            "--model",
            "test-org/tiny-chat",
            "--data",
            chats.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
            "--max-steps",
            "2",
            "--lora-rank",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let acfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(acfg["base_model_name_or_path"], "test-org/tiny-chat");
    let card = std::fs::read_to_string(run_dir.join("adapter/README.md")).unwrap();
    assert!(
        card.contains("base_model: \"test-org/tiny-chat\""),
        "{card}"
    );
    let merged = tmp.path().join("merged");
    convert(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        run_dir.join("adapter").to_str().unwrap(),
        &merged,
    );
    assert_eq!(
        hub.requests().len(),
        before,
        "the cached base was fetched again"
    );

    // One GGUF file of a repository by name.
    let from_gguf = tmp.path().join("from-gguf");
    convert(
        &hub,
        &home,
        &[],
        "test-org/tiny-GGUF/tiny.Q8_0.gguf",
        &from_gguf,
    );
    same_weights(&from_gguf, &gguf);

    // A data file by URL; meta.json names it as given.
    let shards = tmp.path().join("shards");
    let url = "hf://datasets/test-org/texts/data/hamlet.txt";
    let (code, err) = hub_run(
        &hub.endpoint,
        &home,
        &[],
        &[
            "data",
            "prepare",
            "--tokenizer",
            base.to_str().unwrap(),
            "--input",
            url,
            "--out",
            shards.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shards.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["inputs"], serde_json::json!([url]));
    assert_eq!(meta["input_bytes"], text.len());

    // Offline, a model the cache lacks is an error that says so.
    let (code, err) = hub_run(
        &hub.endpoint,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &[
            "convert",
            "--input",
            "test-org/other",
            "--output",
            tmp.path().join("x").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("HF_HUB_OFFLINE is set and the cache"), "{err}");
    assert!(err.contains("models--test-org--other"), "{err}");
}

#[test]
fn a_cut_connection_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = chat_base_and_data(tmp.path());
    let repos = BTreeMap::from([(
        "test-org/cut".to_string(),
        HubRepo {
            files: files_of(&base),
            cut_once: Some("model.safetensors".into()),
            ..Default::default()
        },
    )]);
    let hub = HubServer::start(repos);
    let copy = tmp.path().join("copy");
    convert(&hub, &tmp.path().join("hf"), &[], "test-org/cut", &copy);
    same_weights(&copy, &base);
    let size = std::fs::metadata(base.join("model.safetensors"))
        .unwrap()
        .len();
    let resumed: Vec<String> = hub
        .requests()
        .into_iter()
        // At the commit the listing named.
        .filter(|r| r.starts_with("/test-org/cut/resolve/0123456789abcdef0123456789abcdef01234567/model.safetensors bytes="))
        .collect();
    // The size probe, the cut download from 0, then the rest from where it stopped.
    assert_eq!(resumed.len(), 3, "{resumed:?}");
    let from: u64 = resumed[2]
        .split("bytes=")
        .nth(1)
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(from, size / 2, "{resumed:?}");
}

#[test]
fn hub_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = chat_base_and_data(tmp.path());
    let repos = BTreeMap::from([
        (
            "test-org/gated".to_string(),
            HubRepo {
                files: files_of(&base),
                token: Some("hf_right".into()),
                ..Default::default()
            },
        ),
        (
            "test-org/stall".to_string(),
            HubRepo {
                files: files_of(&base),
                stall: Some("model.safetensors".into()),
                ..Default::default()
            },
        ),
    ]);
    let hub = HubServer::start(repos);
    let home = tmp.path().join("hf");
    let out = tmp.path().join("out");
    let convert = |id: &str, env: &[(&str, &str)], endpoint: &str| {
        hub_run(
            endpoint,
            &home,
            env,
            &["convert", "--input", id, "--output", out.to_str().unwrap()],
        )
    };
    let e = &hub.endpoint;
    for (id, env, endpoint, says) in [
        (
            "test-org/missing",
            &[][..],
            e.as_str(),
            "'test-org/missing' is not a local path, and http://127.0.0.1",
        ),
        (
            "test-org/gated",
            &[][..],
            e,
            "the repository is gated: accept its terms at http://127.0.0.1",
        ),
        (
            "test-org/gated",
            &[("HF_TOKEN", "hf_wrong")][..],
            e,
            "has no access to this gated repository",
        ),
        (
            "test-org/stall",
            &[("HF_HUB_DOWNLOAD_TIMEOUT", "1")][..],
            e,
            "stopped answering (nothing received for 1 s",
        ),
        (
            "test-org/gated",
            &[][..],
            "http://127.0.0.1:9",
            "cannot reach http://127.0.0.1:9",
        ),
    ] {
        let (code, err) = convert(id, env, endpoint);
        assert_ne!(code, 0, "{id} {env:?}");
        assert!(err.contains(says), "{id} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
    }
    // The right token opens the gated repository (and is sent as a bearer token).
    let (code, err) = convert("test-org/gated", &[("HF_TOKEN", "hf_right")], e);
    assert_eq!(code, 0, "{err}");
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.ends_with("Bearer hf_right")));
    // So does the token `huggingface-cli login` saves (HF_HOME/token), in a fresh cache.
    std::fs::remove_dir_all(&out).unwrap();
    let home2 = tmp.path().join("hf2");
    std::fs::create_dir_all(&home2).unwrap();
    std::fs::write(home2.join("token"), "hf_right\n").unwrap();
    let args = [
        "convert",
        "--input",
        "test-org/gated",
        "--output",
        out.to_str().unwrap(),
    ];
    let (code, err) = hub_run(e, &home2, &[], &args);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    // A local path that is not there is still a not-found error, not a Hub request.
    let before = hub.requests().len();
    let (code, err) = convert("runs/typo/model", &[], e);
    assert_ne!(code, 0);
    assert!(err.contains("runs/typo/model"), "{err}");
    assert_eq!(
        hub.requests().len(),
        before,
        "a Hub request for a local path"
    );

    // An adapter whose base is a Hub id that is not there says which file names it.
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj"], "base_model_name_or_path": "test-org/missing"});
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    let (code, err) = convert(adapter.to_str().unwrap(), &[], e);
    assert_ne!(code, 0);
    assert!(
        err.contains("adapter_config.json names the base model test-org/missing"),
        "{err}"
    );
}
