//! The preference-tuning source: pair files split into training and held-out pairs, tokenized with
//! the model's chat template, and the reference model's log-probabilities of every pair, computed
//! once when the run starts and kept in `RUN/reference_logps.json` (a resumed run reads them).

use super::dpo::{reference_logps, PairLoader};
use super::source::Source;
use crate::chat_template::{ChatFormat, Message};
use crate::config::RunConfig;
use crate::data::preference::{build_pair_examples, load_pairs, PairExample};
use crate::data::sft::{split_held_out, EpochSampler};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file a run keeps its reference log-probabilities in.
pub const REFERENCE_FILE: &str = "reference_logps.json";

/// A pair's (chosen, rejected) log-probabilities.
type PairLogps = [f64; 2];

/// What the file names the reference when it is the model the run started from.
const STARTING_MODEL: &str = "the starting model";

/// The preference source of a run (reference log-probabilities not yet attached).
pub(super) fn open_pairs(
    cfg: &RunConfig,
    model: &ModelConfig,
    tok: &Tokenizer,
    rank: usize,
    world: usize,
) -> Result<Source> {
    let format = ChatFormat::new(tok, model.eos_token_id)?;
    let mut all = Vec::new();
    for f in &cfg.sft.data {
        let local = crate::formats::hub::resolve_data_file(f)?;
        all.extend(load_pairs(&local)?);
    }
    let reps = super::chat_source::parse_replacements(&cfg.sft.replace)?;
    let messages = all.iter_mut().flat_map(|p| {
        p.prompt
            .iter_mut()
            .chain(&mut p.chosen)
            .chain(&mut p.rejected)
    });
    super::chat_source::replace_in(messages, &reps);
    let (train, held) = split_held_out(all, cfg.sft.val_fraction, cfg.train.seed);
    let sample: Vec<Message> = match (
        cfg.eval.sample_prompt.as_str(),
        held.first().or(train.first()),
    ) {
        ("", Some(p)) => p.prompt.clone(),
        (p, _) => vec![Message::new("user", p)],
    };
    let context = cfg.train.context;
    let (train_ex, st) = build_pair_examples(&format, tok, &train, context)?;
    let (val_ex, sv) = build_pair_examples(&format, tok, &held, context)?;
    if rank == 0 {
        let tokens: usize = train_ex
            .iter()
            .map(|p| p.chosen.inputs.len() + p.rejected.inputs.len())
            .sum();
        eprintln!(
            "preference data: {} training pairs ({} tokens), {} held out",
            train_ex.len(),
            crate::progress::human(tokens as f64),
            val_ex.len()
        );
        let (cut, dropped) = (st.truncated + sv.truncated, st.dropped + sv.dropped);
        if cut + dropped > 0 {
            eprintln!(
                "note: {cut} pairs were cut to the context of {context} tokens (their prompts' start first); {dropped} had a reply without tokens and were skipped"
            );
        }
    }
    if train_ex.is_empty() {
        return Err(Error::Config("no preference pairs left to train on".into()));
    }
    let sampler = EpochSampler::new(
        train_ex.len(),
        cfg.train.batch_size,
        cfg.train.seed,
        rank,
        world,
    );
    let n_val = val_ex.len();
    Ok(Source::Pairs {
        loader: PairLoader {
            refs: vec![[f64::NAN; 2]; train_ex.len()],
            pairs: train_ex,
            pad: tok.eot_id().unwrap_or(0),
            sampler,
        },
        val: val_ex,
        val_refs: vec![[f64::NAN; 2]; n_val],
        format,
        sample,
    })
}

/// What `reference_logps.json` holds.
#[derive(Serialize, Deserialize)]
struct ReferenceFile {
    /// Of the tokens of every pair, in order: the file belongs to this data.
    fingerprint: String,
    /// What the reference model was.
    model: String,
    train: Vec<[f64; 2]>,
    val: Vec<[f64; 2]>,
}

/// FNV-1a over every pair's tokens and targets.
fn fingerprint(sets: [&[PairExample]; 2]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    };
    for set in sets {
        eat(set.len() as u64);
        for p in set {
            for e in [&p.chosen, &p.rejected] {
                eat(e.inputs.len() as u64);
                e.inputs.iter().for_each(|&t| eat(t as u64));
                e.targets.iter().for_each(|&t| eat(t as u64));
            }
        }
    }
    format!("{h:016x}")
}

impl Source {
    /// Fills in the reference log-probabilities of a preference source: read from the run's
    /// file, or computed (every rank its share, summed) with `cfg.dpo.ref_model`, else with
    /// `policy` when the run is at its first step, and written there. Other sources: nothing.
    pub(super) fn attach_reference(
        &mut self,
        cfg: &RunConfig,
        run_dir: &Path,
        policy: &Transformer,
        at_start: bool,
        coll: &dyn Collective,
    ) -> Result<()> {
        let Source::Pairs {
            loader,
            val,
            val_refs,
            ..
        } = self
        else {
            return Ok(());
        };
        let path = run_dir.join(REFERENCE_FILE);
        let print = fingerprint([&loader.pairs, val]);
        if path.exists() {
            let f = read_reference(&path, &print, cfg, loader.pairs.len(), val.len())?;
            loader.refs = f.train;
            *val_refs = f.val;
            return Ok(());
        }
        let (model, name) = match cfg.dpo.ref_model.as_str() {
            "" if !at_start => {
                return Err(Error::bad_file(
                    &path,
                    "missing: the run's reference log-probabilities are gone and the starting model is not the policy any more; set dpo.ref_model to the model the run started from",
                ))
            }
            "" => (None, STARTING_MODEL.to_string()),
            r => (Some(load_reference(r, policy)?), r.to_string()),
        };
        let model = model.as_ref().unwrap_or(policy);
        if coll.is_lead() {
            eprintln!(
                "reference log-probabilities of {} pairs under {name}...",
                loader.pairs.len() + val.len()
            );
        }
        let (train, held) = score_pairs(model, &loader.pairs, val, loader.pad, cfg, run_dir, coll)?;
        if let Some(bad) = train.iter().chain(&held).flatten().find(|x| !x.is_finite()) {
            return Err(Error::Training(format!(
                "the reference model gives a log-probability of {bad} to a pair; check the reference model ({name})"
            )));
        }
        if coll.is_lead() {
            let f = ReferenceFile {
                fingerprint: print,
                model: name,
                train: train.clone(),
                val: held.clone(),
            };
            let text = serde_json::to_string(&f).expect("numbers serialize");
            crate::fsutil::write_atomic(&path, text.as_bytes())?;
        }
        loader.refs = train;
        *val_refs = held;
        Ok(())
    }
}

/// The run's reference file, checked to be of these pairs (`print`, and `n_train` + `n_val` of
/// them) and of the reference `dpo.ref_model` names.
fn read_reference(
    path: &Path,
    print: &str,
    cfg: &RunConfig,
    n_train: usize,
    n_val: usize,
) -> Result<ReferenceFile> {
    let text = crate::fsutil::read_to_string(path)?;
    let f: ReferenceFile = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("malformed: {e}")))?;
    if f.fingerprint != print || f.train.len() != n_train || f.val.len() != n_val {
        return Err(Error::bad_file(
            path,
            "these reference log-probabilities are of other pairs (the data files changed since the run started); restore the data or start a new run",
        ));
    }
    let asked = match cfg.dpo.ref_model.as_str() {
        "" => STARTING_MODEL,
        r => r,
    };
    if f.model != asked {
        return Err(Error::bad_file(
            path,
            format!(
                "this run's reference is {}, but dpo.ref_model now names {asked}; a run keeps its reference (start a new run for another)",
                f.model
            ),
        ));
    }
    Ok(f)
}

/// Every pair's log-probabilities under `model`, each rank scoring its share (summed over the
/// ranks), with a progress bar on rank 0 (a line every tenth without a terminal); a signal stops
/// it.
fn score_pairs(
    model: &Transformer,
    pairs: &[PairExample],
    val: &[PairExample],
    pad: u32,
    cfg: &RunConfig,
    run_dir: &Path,
    coll: &dyn Collective,
) -> Result<(Vec<PairLogps>, Vec<PairLogps>)> {
    let (rank, world) = (coll.rank(), coll.world());
    let batch = cfg.train.batch_size;
    let mine = |i: usize| i % world == rank;
    // This rank's share, on a bar (rank 0), or a line every tenth without a terminal.
    let share = (pairs.len() + val.len()).div_ceil(world);
    let bar = match coll.is_lead() {
        true => crate::progress::steps_bar(share as u64),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_message("pairs scored by the reference");
    let (started, mut count, mut shown) = (std::time::Instant::now(), 0, 0);
    let mut done = |n: usize| {
        // A signal stops the pass; the run, with no checkpoint yet, starts again on --resume.
        if super::interrupt::requested() {
            bar.finish_and_clear();
            return Err(Error::Interrupted(format!(
                    "stopped by {} while scoring the pairs with the reference; start it again with: chatforge dpo --resume {}",
                    super::interrupt::signal_name(),
                    run_dir.display()
                )));
        }
        count += n;
        bar.set_position(count as u64);
        if coll.is_lead() && bar.is_hidden() && count * 10 / share.max(1) > shown {
            shown = count * 10 / share.max(1);
            let secs = started.elapsed().as_secs_f64();
            let eta = secs * (share.saturating_sub(count)) as f64 / count as f64;
            eprintln!(
                "reference: {count}/{share} pairs in {} | ETA {}",
                crate::progress::duration(secs),
                crate::progress::duration(eta)
            );
        }
        Ok(())
    };
    let mut train = reference_logps(model, pairs, batch, pad, mine, &mut done)?;
    let mut held = reference_logps(model, val, batch, pad, mine, &mut done)?;
    bar.finish_and_clear();
    if coll.communicates() {
        let mut flat: Vec<f64> = train.iter().chain(&held).flatten().copied().collect();
        coll.all_reduce_sum_f64(&mut flat);
        let pairs: Vec<[f64; 2]> = flat.chunks(2).map(|c| [c[0], c[1]]).collect();
        held = pairs[train.len()..].to_vec();
        train = pairs[..train.len()].to_vec();
    }
    Ok((train, held))
}

/// The reference model named by `dpo.ref_model`, which must share the policy's vocabulary.
fn load_reference(name: &str, policy: &Transformer) -> Result<Transformer> {
    let loaded = crate::formats::LoadedModel::load(Path::new(name), policy.device())?;
    if loaded.cfg.vocab_size != policy.cfg.vocab_size {
        return Err(Error::Mismatch(format!(
            "dpo.ref_model {name}: its vocabulary has {} tokens, the policy's {}; the reference must use the policy's tokenizer",
            loaded.cfg.vocab_size, policy.cfg.vocab_size
        )));
    }
    loaded.transformer()
}
