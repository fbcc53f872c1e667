//! `chatforge speedrun`: the whole pipeline on a small corpus in about ten minutes on a laptop CPU —
//! train a tokenizer, prepare shards, pre-train the tiny preset, fine-tune it on synthetic chat
//! tasks and, with `--rl-steps`, tune it with GRPO on one of them — ending in `report.md` with the
//! report card (scores before and after each chat stage).

mod chat_stages;

pub use chat_stages::{SftStage, SPEEDRUN_RL_CONFIG, SPEEDRUN_SFT_CONFIG};

use crate::config::RunConfig;
use crate::data::{prepare, PrepareOptions};
use crate::error::{Error, Result};
use crate::progress::{duration, human};
use crate::tokenizer::Tokenizer;
use crate::train::RunSummary;
use chat_stages::{report_card, sft_stage, stage_rows, SftResult};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
pub const TINY_SHAKESPEARE_SHA256: &str =
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

/// Vocabulary of the speedrun's tokenizer: small corpora learn faster with small vocabularies.
pub const SPEEDRUN_VOCAB: usize = 2048;

/// The pre-training config of the speedrun (tiny preset), before `--set` overrides.
pub const SPEEDRUN_CONFIG: &str = r#"
[model]
preset = "tiny"

[train]
context = 256
batch_size = 8
max_steps = 450
lr = 2e-3
min_lr_ratio = 0.05
schedule = "cosine"
warmup_steps = 40
weight_decay = 0.1
grad_clip = 1.0
log_every = 25

[eval]
every = 100
tokens = 32768
sample_every = 250
sample_tokens = 120
sample_prompt = "ROMEO:"

[checkpoint]
every = 250
keep = 1
"#;

/// Where downloads are cached: $CHATFORGE_CACHE, else $XDG_CACHE_HOME/chatforge, else ~/.cache/chatforge.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CHATFORGE_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("chatforge");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/chatforge")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Tiny Shakespeare from the cache, downloading and checking it on first use.
pub fn tiny_shakespeare() -> Result<PathBuf> {
    let path = cache_dir().join("tinyshakespeare.txt");
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if sha256_hex(&bytes) == TINY_SHAKESPEARE_SHA256 {
            return Ok(path);
        }
    }
    // A mirror can stand in for the public URL.
    let url = std::env::var("CHATFORGE_TINY_SHAKESPEARE_URL")
        .unwrap_or_else(|_| TINY_SHAKESPEARE_URL.to_string());
    eprintln!("downloading tiny Shakespeare from {url}");
    let fail = |why: String| {
        Error::Config(format!(
            "could not download the default corpus ({why}).\n  Pass a text file instead: chatforge speedrun --corpus FILE\n  \
             (e.g. --corpus ../shared/data/tinyshakespeare.txt), or put tiny Shakespeare at {}",
            path.display()
        ))
    };
    let mut resp = ureq::get(TINY_SHAKESPEARE_URL)
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| fail(e.to_string()))?;
    let got = sha256_hex(&bytes);
    if got != TINY_SHAKESPEARE_SHA256 {
        return Err(fail(format!(
            "sha256 {got} is not the expected {TINY_SHAKESPEARE_SHA256}"
        )));
    }
    crate::fsutil::write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Runs the pipeline into `out` and returns the path of `report.md`.
pub fn speedrun(
    corpus: Option<&Path>,
    out: &Path,
    vocab_size: usize,
    overrides: &[String],
    stage: &SftStage,
) -> Result<PathBuf> {
    crate::fsutil::ensure_new_or_empty(out, "the run directory")?;
    let t_all = Instant::now();
    let corpus = match corpus {
        Some(c) => c.to_path_buf(),
        None => tiny_shakespeare()?,
    };
    let corpus_bytes = std::fs::metadata(&corpus)
        .map_err(|e| Error::io(&corpus, e))?
        .len();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let n = match (stage.steps, stage.rl_steps) {
        (0, _) => 3,
        (_, 0) => 4,
        _ => 5,
    };
    eprintln!(
        "[1/{n}] tokenizer: byte-level BPE, {vocab_size} tokens, on {}",
        corpus.display()
    );
    let t0 = Instant::now();
    let tok = Tokenizer::train(std::slice::from_ref(&corpus), vocab_size)?;
    let tok_dir = out.join("tokenizer");
    crate::fsutil::write_dir_atomic(&tok_dir, |d| tok.save_to_dir(d, 1024))?;
    let t_tok = t0.elapsed().as_secs_f64();

    eprintln!("[2/{n}] data: tokenizing into shards");
    let t0 = Instant::now();
    let data_dir = out.join("data");
    let meta = prepare(
        &tok,
        std::slice::from_ref(&corpus),
        &data_dir,
        &PrepareOptions::default(),
    )?;
    let t_data = t0.elapsed().as_secs_f64();

    eprintln!("[3/{n}] pre-training");
    let cfg_path = out.join("speedrun.toml");
    crate::fsutil::write_atomic(&cfg_path, SPEEDRUN_CONFIG.as_bytes())?;
    let mut set = vec![format!("data.dir={}", data_dir.display())];
    set.extend(overrides.iter().cloned());
    let cfg = RunConfig::load(Some(&cfg_path), &set)?;
    let summary = crate::train::pretrain(cfg.clone(), &out.join("pretrain"))?;
    let sft = if stage.steps > 0 {
        eprintln!("[4/{n}] supervised fine-tuning on the synthetic chat tasks");
        Some(sft_stage(out, &summary.model_dir, stage, cfg.train.seed)?)
    } else {
        None
    };
    let report = out.join("report.md");
    let text = render_report(&ReportInputs {
        corpus: &corpus,
        corpus_bytes,
        vocab: tok.vocab_size(),
        t_tok,
        train_tokens: meta.train_tokens,
        val_tokens: meta.val_tokens,
        t_data,
        cfg: &cfg,
        summary: &summary,
        sft: sft.as_ref(),
        total_secs: t_all.elapsed().as_secs_f64(),
    });
    crate::fsutil::write_atomic(&report, text.as_bytes())?;
    Ok(report)
}

struct ReportInputs<'a> {
    corpus: &'a Path,
    corpus_bytes: u64,
    vocab: usize,
    t_tok: f64,
    train_tokens: usize,
    val_tokens: usize,
    t_data: f64,
    cfg: &'a RunConfig,
    summary: &'a RunSummary,
    sft: Option<&'a SftResult>,
    total_secs: f64,
}

fn render_report(r: &ReportInputs) -> String {
    let s = r.summary;
    let mut o = String::new();
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    let _ = writeln!(o, "# chatforge speedrun report\n");
    let _ = writeln!(
        o,
        "Corpus: `{}` ({:.2} MB). Total wall time: {}.\n",
        r.corpus.display(),
        r.corpus_bytes as f64 / 1e6,
        duration(r.total_secs)
    );
    let _ = writeln!(o, "| stage | result | time |\n| --- | --- | --- |");
    let _ = writeln!(
        o,
        "| tokenizer | byte-level BPE, {} tokens | {} |",
        r.vocab,
        duration(r.t_tok)
    );
    let _ = writeln!(
        o,
        "| data | {} train / {} validation tokens | {} |",
        human(r.train_tokens as f64),
        human(r.val_tokens as f64),
        duration(r.t_data)
    );
    let _ = writeln!(
        o,
        "| pre-training | {} params, {} steps, {} tokens | {} |",
        human(s.params as f64),
        s.steps,
        human(s.tokens_seen as f64),
        duration(s.seconds)
    );
    if let Some(f) = r.sft {
        stage_rows(&mut o, f);
    }
    let _ = writeln!(o);
    if let Some(f) = r.sft {
        report_card(&mut o, f);
    }
    let _ = writeln!(o, "## Results\n");
    let _ = writeln!(o, "| metric | value |\n| --- | --- |");
    let _ = writeln!(o, "| validation loss (nats/token) | {} |", opt(s.val_loss));
    let _ = writeln!(o, "| validation bits per byte | {} |", opt(s.val_bpb));
    let _ = writeln!(
        o,
        "| first / final train loss | {:.4} / {:.4} |",
        s.first_loss, s.final_loss
    );
    let _ = writeln!(
        o,
        "| training throughput | {:.0} tokens/s |",
        s.tokens_per_sec
    );
    let _ = writeln!(o, "| model FLOPs utilisation | {:.1}% |\n", 100.0 * s.mfu);
    let _ = writeln!(o, "![loss curve](pretrain/loss.png)\n");
    let _ = writeln!(o, "## Samples\n");
    for (i, sample) in s.samples.iter().enumerate() {
        let _ = writeln!(
            o,
            "Sample {}:\n\n```text\n{}\n```\n",
            i + 1,
            sample.trim_end()
        );
    }
    let _ = writeln!(o, "## Config\n\n```toml\n{}```\n", r.cfg.to_toml());
    let _ = writeln!(o, "## Next\n");
    let _ = writeln!(
        o,
        "```sh\nchatforge eval --model {} --task ppl --data FILE.txt\n```",
        s.model_dir.display()
    );
    if let Some(f) = r.sft {
        let _ = writeln!(
            o,
            "\n```sh\nchatforge chat --model {}\n```",
            f.summary.model_dir.display()
        );
    }
    o
}
