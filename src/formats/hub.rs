//! Models and data by name from the Hugging Face Hub. A model is `ORG/NAME[@REVISION]` (its
//! config, tokenizer and safetensors, sharded or not) or `ORG/NAME[@REVISION]/FILE.gguf` (one
//! file); data is `hf://datasets/ORG/NAME[@REVISION]/PATH`. Files go into the standard cache the
//! Python tools share (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`)
//! through the hf-hub crate (`hub_fetch.rs`); once whole there, a model loads without the network.
//! `HF_ENDPOINT`, `HF_TOKEN` (else `HF_HOME/token`) and `HF_HUB_OFFLINE` are honoured.

use super::hub_fetch::Hub;
pub use super::hub_ref::{is_repo_id, HubRef};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The Hub model `spec` names: none when a local path of that name exists, or when it is no
/// model name (only a .gguf file is loaded from a repository by name; anything else is a local
/// path that is not there).
pub fn hub_model(spec: &Path) -> Option<HubRef> {
    if spec.exists() {
        return None;
    }
    let r = spec.to_str().and_then(HubRef::model)?;
    r.file
        .as_deref()
        .is_none_or(|f| super::gguf::has_gguf_extension(Path::new(f)))
        .then_some(r)
}

/// The local path of a model: `spec` itself when it exists, else the Hub model it names,
/// downloaded into the cache unless the cache holds it whole. Anything else is a not-found error.
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(r) = hub_model(spec) else {
        return Err(Error::io(spec, std::io::ErrorKind::NotFound.into()));
    };
    match &r.file {
        Some(f) => Hub::from_env()?.file(&r, f),
        None => model_snapshot(&Hub::from_env()?, &r),
    }
}

/// The local copy of a data file named `hf://datasets/...`; other inputs are returned as given.
pub fn resolve_data_file(input: &Path) -> Result<PathBuf> {
    let Some(s) = input.to_str().filter(|s| s.starts_with("hf://")) else {
        return Ok(input.to_path_buf());
    };
    let r = HubRef::data_file(s).ok_or_else(|| {
        Error::Hub(format!(
            "'{s}' is not a Hub data file: write hf://datasets/ORG/NAME/PATH (or ORG/NAME@REVISION/PATH)"
        ))
    })?;
    let file = r.file.clone().expect("a data file names its path");
    Hub::from_env()?.file(&r, &file)
}

/// The card, tokenizer and config files a model directory may hold (the weights come after them and
/// config.json last, so that a cached config.json means the download finished).
const SIDE_FILES: [&str; 8] = [
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];
const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// A model repository's snapshot directory in the cache, fetched first unless it is whole there.
fn model_snapshot(hub: &Hub, r: &HubRef) -> Result<PathBuf> {
    if let Some(dir) = cached_model(hub, r)? {
        return Ok(dir);
    }
    let mut fetch = hub.fetcher(r)?;
    let files = fetch.list()?;
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has(CONFIG) {
        return Err(Error::Hub(format!(
            "{} has no config.json: it is not a transformers model{}",
            r.display(),
            gguf_hint(r, &files)
        )));
    }
    for f in SIDE_FILES.iter().filter(|f| has(f)) {
        fetch.get(f)?;
    }
    if has(WEIGHTS_INDEX) {
        let index = fetch.get(WEIGHTS_INDEX)?;
        for shard in shards(&index)? {
            fetch.get(&shard)?;
        }
    } else if has(WEIGHTS) {
        fetch.get(WEIGHTS)?;
    } else {
        return Err(Error::Hub(format!(
            "{} has no safetensors weights (model.safetensors or model.safetensors.index.json){}",
            r.display(),
            gguf_hint(r, &files)
        )));
    }
    let config = fetch.get(CONFIG)?;
    fetch.record_revision()?;
    Ok(config
        .parent()
        .expect("a cached file lies in its snapshot")
        .to_path_buf())
}

/// The snapshot when the cache holds the model whole (config.json, and every weight file);
/// offline, the error when it does not. Online, a snapshot without a tokenizer (a cache filled
/// with the weights only) is completed from the listing.
fn cached_model(hub: &Hub, r: &HubRef) -> Result<Option<PathBuf>> {
    let whole = hub.cached(r, CONFIG).and_then(|config| {
        let dir = config.parent()?.to_path_buf();
        let weights = match dir.join(WEIGHTS_INDEX).exists() {
            true => shards(&dir.join(WEIGHTS_INDEX)).ok()?,
            false => vec![WEIGHTS.to_string()],
        };
        let tokenizer = ["tokenizer.json", "vocab.json"]
            .iter()
            .any(|t| dir.join(t).exists());
        let enough = weights.iter().all(|w| dir.join(w).exists()) && (tokenizer || hub.offline);
        enough.then_some(dir)
    });
    match (whole, hub.offline) {
        (Some(dir), _) => Ok(Some(dir)),
        (None, true) => Err(hub.not_cached(r)),
        (None, false) => Ok(None),
    }
}

/// The shard files a safetensors index names, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>> {
    let v = crate::fsutil::read_json(index)?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| Error::bad_file(index, "no weight_map: not a safetensors index"))?;
    let mut files: Vec<String> = Vec::new();
    for f in map.values() {
        // A file beside the index, as the loader reads them (hf::weight_files).
        let f = f
            .as_str()
            .filter(|f| !f.is_empty() && !f.starts_with('.') && !f.contains(['/', '\\']))
            .ok_or_else(|| {
                Error::bad_file(
                    index,
                    format!("weight_map names {f}, not a file beside the index"),
                )
            })?;
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    Ok(files)
}

/// Names the GGUF files of a repository that has them, as a way out.
fn gguf_hint(r: &HubRef, files: &[String]) -> String {
    let ggufs: Vec<&str> = files
        .iter()
        .filter(|f| super::gguf::has_gguf_extension(Path::new(f)))
        .map(String::as_str)
        .collect();
    match ggufs.first() {
        None => String::new(),
        Some(first) => format!(
            "; it holds GGUF files ({}): load one by name, e.g. --model {}/{first}",
            ggufs.join(", "),
            r.display()
        ),
    }
}
