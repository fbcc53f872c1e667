//! The speedrun's chat stages: supervised fine-tuning on the synthetic chat tasks and, optionally,
//! reinforcement learning (GRPO) on one of them, each scored on the same held-out questions before
//! and after; and the report card that shows those scores, a column per stage.

use crate::config::{RlTask, RunConfig};
use crate::data::chat::Conversation;
use crate::data::synthetic::{save_task_files, ALL_TASKS};
use crate::error::{Error, Result};
use crate::eval::tasks::chat_exact_match;
use crate::progress::{duration, human};
use crate::train::RunSummary;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the speedrun's fine-tuning stage does.
#[derive(Debug, Clone)]
pub struct SftStage {
    /// Optimizer steps of SFT (0 skips the stage).
    pub steps: usize,
    /// Training conversations per synthetic task.
    pub train_per_task: usize,
    /// Held-out questions per synthetic task (scored before and after SFT).
    pub test_per_task: usize,
    /// Chat files to fine-tune on as well.
    pub chat_data: Vec<PathBuf>,
    /// `--set` overrides of the SFT run.
    pub overrides: Vec<String>,
    /// GRPO steps after SFT on `rl_task` (0 skips the stage).
    pub rl_steps: usize,
    pub rl_task: RlTask,
    /// `--set` overrides of the RL run.
    pub rl_overrides: Vec<String>,
}

impl Default for SftStage {
    fn default() -> Self {
        SftStage {
            steps: 300,
            train_per_task: 2000,
            test_per_task: 100,
            chat_data: vec![],
            overrides: vec![],
            rl_steps: 0,
            rl_task: RlTask::CountLetters,
            rl_overrides: vec![],
        }
    }
}

/// The SFT config of the speedrun, before `--sft-set` overrides.
pub const SPEEDRUN_SFT_CONFIG: &str = r#"
[train]
batch_size = 32
lr = 1e-3
min_lr_ratio = 0.0
schedule = "cosine"
warmup_steps = 20
weight_decay = 0.0
grad_clip = 1.0
log_every = 25
[sft]
val_fraction = 0.02
[eval]
every = 100
sample_every = 0
sample_tokens = 24
sample_temperature = 0.0
sample_prompt = "Spell the word \"garden\" letter by letter."
[checkpoint]
every = 0
keep = 1
"#;

/// The RL config of the speedrun (GRPO on one synthetic task, every weight of the small model),
/// before `--rl-set` overrides; its held-out problems are the SFT stage's held-out questions of
/// that task (the same seed and count: `data::synthetic::generate` draws them first).
pub const SPEEDRUN_RL_CONFIG: &str = r#"
[train]
batch_size = 16
lr = 1e-4
min_lr_ratio = 0.0
schedule = "cosine"
warmup_steps = 0
weight_decay = 0.0
grad_clip = 1.0
log_every = 5
[sft]
objective = "rl"
[rl]
group = 8
prompts_per_step = 8
max_new_tokens = 24
temperature = 1.0
[eval]
sample_every = 0
sample_tokens = 24
sample_temperature = 0.0
[checkpoint]
every = 0
keep = 1
"#;

/// Scores of the synthetic tasks' held-out questions, before and after SFT (and after RL).
pub(super) struct SftResult {
    pub summary: RunSummary,
    scores: Vec<(String, f64, f64)>,
    items: usize,
    pub seconds: f64,
    pub rl: Option<RlResult>,
}

/// The RL stage: its run and every task's score after it.
pub(super) struct RlResult {
    pub summary: RunSummary,
    task: RlTask,
    after: Vec<f64>,
    pub seconds: f64,
}

/// Exact-match accuracy of a model on each held-out task file.
fn score_tasks(model_dir: &Path, tests: &[(String, Vec<Conversation>)]) -> Result<Vec<f64>> {
    let m = crate::formats::LoadedModel::load(model_dir, &candle_core::Device::Cpu)?;
    let tok = m.tokenizer(model_dir)?;
    let model = m.transformer()?;
    tests
        .iter()
        .map(|(_, convs)| Ok(chat_exact_match(&model, tok, convs, 24)?.exact_match))
        .collect()
}

/// Stage 4: synthetic chat tasks (plus any chat files), scores before, SFT, scores after; then
/// stage 5 where asked for, RL on one task, scores after it.
pub(super) fn sft_stage(out: &Path, base: &Path, stage: &SftStage, seed: u64) -> Result<SftResult> {
    let t0 = Instant::now();
    let dir = out.join("sft-data");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let counts = (stage.train_per_task, stage.test_per_task);
    let tests: Vec<(String, Vec<Conversation>)> = save_task_files(&dir, &ALL_TASKS, counts, seed)?
        .into_iter()
        .map(|(t, _, te)| (t.name().to_string(), te))
        .collect();
    let train_file = dir.join("train.jsonl");
    eprintln!(
        "      scoring the base model on {} held-out questions",
        3 * stage.test_per_task
    );
    let before = score_tasks(base, &tests)?;
    let cfg_path = out.join("speedrun-sft.toml");
    crate::fsutil::write_atomic(&cfg_path, SPEEDRUN_SFT_CONFIG.as_bytes())?;
    let files: Vec<String> = std::iter::once(&train_file)
        .chain(&stage.chat_data)
        .map(|p| toml::Value::String(p.display().to_string()).to_string())
        .collect();
    let mut set = vec![
        format!("model.init_from={}", base.display()),
        format!("sft.data=[{}]", files.join(", ")),
        format!("train.max_steps={}", stage.steps),
    ];
    set.extend(stage.overrides.iter().cloned());
    let cfg = RunConfig::load(Some(&cfg_path), &set)?;
    let summary = crate::train::sft(cfg, &out.join("sft"))?;
    let after = score_tasks(&summary.model_dir, &tests)?;
    let scores = tests
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (&b, &a))| (name.clone(), b, a))
        .collect();
    record_scores(&summary, &after, &tests, stage.test_per_task)?;
    let seconds = t0.elapsed().as_secs_f64();
    let rl = match stage.rl_steps {
        0 => None,
        _ => Some(rl_stage(out, &summary.model_dir, stage, seed, &tests)?),
    };
    Ok(SftResult {
        summary,
        scores,
        items: stage.test_per_task,
        seconds,
        rl,
    })
}

/// Stage 5: GRPO on `stage.rl_task` from the fine-tuned model, every task scored after it.
fn rl_stage(
    out: &Path,
    sft_model: &Path,
    stage: &SftStage,
    seed: u64,
    tests: &[(String, Vec<Conversation>)],
) -> Result<RlResult> {
    let t0 = Instant::now();
    eprintln!(
        "[5/5] reinforcement learning (GRPO) on {} for {} steps",
        stage.rl_task, stage.rl_steps
    );
    let cfg_path = out.join("speedrun-rl.toml");
    crate::fsutil::write_atomic(&cfg_path, SPEEDRUN_RL_CONFIG.as_bytes())?;
    let mut set = vec![
        format!("model.init_from={}", sft_model.display()),
        format!("rl.task={}", stage.rl_task),
        format!("rl.eval_problems={}", stage.test_per_task),
        format!("train.max_steps={}", stage.rl_steps),
        format!("train.seed={seed}"),
        format!("eval.every={}", stage.rl_steps),
    ];
    set.extend(stage.rl_overrides.iter().cloned());
    let cfg = RunConfig::load(Some(&cfg_path), &set)?;
    let summary = crate::train::sft(cfg, &out.join("rl"))?;
    let after = score_tasks(&summary.model_dir, tests)?;
    record_scores(&summary, &after, tests, stage.test_per_task)?;
    Ok(RlResult {
        summary,
        task: stage.rl_task,
        after,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Adds the held-out exact-match scores to the fine-tuned model's card.
fn record_scores(
    summary: &RunSummary,
    after: &[f64],
    tests: &[(String, Vec<Conversation>)],
    items: usize,
) -> Result<()> {
    let mut card = summary.card.clone();
    for ((name, _), &score) in tests.iter().zip(after) {
        card.results.push(crate::formats::model_card::CardResult {
            dataset: format!("chatforge-synthetic-{name}"),
            dataset_name: format!("{items} held-out synthetic {name} questions"),
            metric: "exact_match".into(),
            metric_name: format!("{name} exact match"),
            value: score,
        });
    }
    crate::formats::model_card::write_card(&summary.model_dir, &card)
}

/// The chat stages' rows of the report's stage table.
pub(super) fn stage_rows(o: &mut String, f: &SftResult) {
    let _ = writeln!(
        o,
        "| supervised fine-tuning | {} steps, {} tokens, final loss {:.4} | {} |",
        f.summary.steps,
        human(f.summary.tokens_seen as f64),
        f.summary.final_loss,
        duration(f.seconds)
    );
    let Some(r) = &f.rl else {
        return;
    };
    let pass = r.summary.card.results.iter().find(|c| c.metric == "pass@1");
    let _ = writeln!(
        o,
        "| reinforcement learning (GRPO) | {} steps, {} | {} |",
        r.summary.steps,
        pass.map_or("no held-out problems".into(), |c| format!(
            "held-out pass@1 {:.1}%",
            100.0 * c.value
        )),
        duration(r.seconds)
    );
}

/// The chat stages' report card: exact match per task before and after each stage, and samples.
pub(super) fn report_card(o: &mut String, f: &SftResult) {
    let _ = writeln!(o, "## Report card\n");
    let rl = f.rl.as_ref();
    let _ = writeln!(
        o,
        "Exact match on {} held-out questions per task (greedy, chat template), before and after {}.\n",
        f.items,
        match rl {
            Some(r) => format!("SFT and after GRPO on {}", r.task),
            None => "SFT".into(),
        }
    );
    match rl {
        Some(_) => {
            let _ = writeln!(
                o,
                "| task | base model | after SFT | after RL |\n| --- | --- | --- | --- |"
            );
        }
        None => {
            let _ = writeln!(o, "| task | base model | after SFT |\n| --- | --- | --- |");
        }
    }
    for (i, (task, b, a)) in f.scores.iter().enumerate() {
        let after_rl = rl
            .map(|r| format!(" {:.1}% |", 100.0 * r.after[i]))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "| {task} | {:.1}% | {:.1}% |{after_rl}",
            100.0 * b,
            100.0 * a
        );
    }
    let _ = writeln!(o);
    for s in &f.summary.samples {
        let _ = writeln!(o, "After SFT:\n\n```text\n{}\n```\n", s.trim_end());
    }
}
