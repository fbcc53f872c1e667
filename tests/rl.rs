//! Reinforcement learning with verifiable rewards (GRPO) against TRL's formulas (fixtures from
//! tools/make_grpo_fixtures.py): the advantages, the clipped loss with its KL penalty and every
//! trainable gradient of a tiny GPT-2 and a tiny Llama, full and LoRA; the verifiers; groups of
//! replies decoded together as one at a time; and `chatforge rl` end to end: it logs TRL's
//! metrics and the held-out pass@1, draws the reward curve, resumes exactly, refuses bad input.

mod common;

use candle_core::{DType, Device};
use chatforge::config::{RlSection, RlTask};
use chatforge::formats::LoadedModel;
use chatforge::infer::{generate_groups, generate_text, GenerateOptions, SamplingParams};
use chatforge::train::grpo::{advantages, objective, GrpoRows};
use chatforge::train::rl_source::{reply_row, reward};
use common::*;
use std::path::Path;

fn check_case(name: &str, case: &str) {
    let exp = candle_core::safetensors::load(
        fixtures().join(format!("{name}-grpo-expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let (base, params, policy, reference) = tuning_case(name, case);
    let rewards: Vec<f64> = exp["rewards"]
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let adv = advantages(&rewards, 3);
    for (a, w) in adv.iter().zip(exp["advantages"].to_vec1::<f32>().unwrap()) {
        assert!((a - w as f64).abs() < 1e-5, "advantage {a} vs TRL's {w}");
    }
    let x = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let y = &exp["targets"];
    let flat = |k: &str| -> Vec<f64> {
        let t = exp[&format!("{case}.{k}")].flatten_all().unwrap();
        t.to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    // The reference's per-token log-probabilities, as a run computes them.
    let ref_nll = reference.token_nll(&x, y).unwrap().flatten_all().unwrap();
    let ours: Vec<f64> = ref_nll
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| -f64::from(v))
        .collect();
    for (a, b) in ours.iter().zip(flat("ref_logps")) {
        assert!(
            (a - b).abs() < 1e-4,
            "{name} {case}: reference log-prob {a} vs {b}"
        );
    }
    let targets = y.flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let step_tokens = targets.iter().filter(|&&t| t >= 0).count() as f64;
    for variant in ["first", "reused"] {
        let (rows, kl) = match variant {
            "first" => (
                GrpoRows {
                    advantages: adv.clone(),
                    old: None,
                    reference: None,
                    step_tokens,
                },
                0.0,
            ),
            _ => (
                GrpoRows {
                    advantages: adv.clone(),
                    old: Some(flat("old_logps")),
                    reference: Some(ours.clone()),
                    step_tokens,
                },
                0.04,
            ),
        };
        let cfg = RlSection {
            kl,
            clip: 0.2,
            ..Default::default()
        };
        let (surrogate, stats, _) = objective(&policy, &x, y, &rows, &cfg).unwrap();
        let key = format!("{case}.{variant}");
        let scalar = |k: &str| exp[&format!("{key}.{k}")].to_vec1::<f32>().unwrap()[0] as f64;
        let clip = stats.clipped / stats.tokens;
        assert!(
            (clip - scalar("clip_ratio")).abs() < 1e-6,
            "{name} {key}: clipped {clip}"
        );
        if variant == "reused" {
            assert!(clip > 0.0, "{name} {key}: the fixture clips some ratios");
            let kl = stats.kl / stats.tokens;
            assert!(
                (kl - scalar("kl")).abs() < 1e-5,
                "{name} {key}: kl {kl} vs {}",
                scalar("kl")
            );
        }
        let grads = policy.backward(&surrogate).unwrap();
        check_tuning_gradients(name, &key, case, &base, &params, &exp, stats.loss, grads);
    }
}

#[test]
fn gpt2_grpo_matches_trl() {
    check_case("gpt2-tiny", "full");
    check_case("gpt2-tiny", "lora");
}

#[test]
fn llama_grpo_matches_trl() {
    check_case("llama-tiny", "full");
    check_case("llama-tiny", "lora");
}

#[test]
fn verifiers_reward_what_they_should() {
    let gsm = |reply: &str, gold: &str| reward(RlTask::Gsm8k, reply, gold);
    assert_eq!(gsm("She pays 3 * 6 = 18 dollars.\n#### 18", "18"), 1.0);
    assert_eq!(gsm("So the answer is $1,250.", "1250"), 1.0);
    assert_eq!(gsm("The total is 18.00", "18"), 1.0);
    assert_eq!(gsm("#### 17", "18"), 0.0);
    // After "####" only its number counts, not a later one.
    assert_eq!(gsm("#### 18 (not 20)", "18"), 1.0);
    assert_eq!(gsm("I do not know.", "18"), 0.0);
    let spell = |reply: &str| reward(RlTask::Spelling, reply, "g-a-r-d-e-n");
    assert_eq!(spell(" g-a-r-d-e-n\n"), 1.0);
    assert_eq!(spell("It is spelled \"g-a-r-d-e-n\"."), 1.0);
    assert_eq!(spell("g-a-r-d-e-n-"), 0.0);
    assert_eq!(
        spell("g-a-r-d-e-n or g-a-r-d-e-m"),
        0.0,
        "one spelling, not a list"
    );
    assert_eq!(spell("garden"), 0.0);
    let count = |reply: &str| reward(RlTask::CountLetters, reply, "3");
    assert_eq!(count("3."), 1.0);
    assert_eq!(
        count("The letter \"r\" appears 3 times in \"strawberry\"."),
        1.0
    );
    assert_eq!(count("It appears 2 times."), 0.0);
    assert_eq!(reward(RlTask::Arithmetic, "4821 - 4833 = -12", "-12"), 1.0);
    assert_eq!(reward(RlTask::Arithmetic, "12", "-12"), 0.0);
    // Equal rewards in a group give no advantage; the others are centred and scaled.
    let a = advantages(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0], 3);
    // (1 - 2/3) / (std 0.57735 + 1e-4), torch's unbiased std.
    assert!((a[0] - (1.0 / 3.0) / (1.0f64 / 3.0f64.sqrt() + 1e-4)).abs() < 1e-9);
    assert!(a[0] == a[1] && a[2] < 0.0 && a[..3].iter().sum::<f64>().abs() < 1e-9);
    assert!(a[3..].iter().all(|v| *v == 0.0));
    // A reply row trains on the reply and its stop token only.
    let row = reply_row(&[5, 6, 7], &[8, 9], Some(2));
    assert_eq!(row.inputs, vec![5, 6, 7, 8, 9]);
    assert_eq!(row.targets, vec![-100, -100, 8, 9, 2]);
}

#[test]
fn groups_decode_together_as_one_at_a_time() {
    let m = LoadedModel::load(&fixtures().join("llama-tiny"), &Device::Cpu).unwrap();
    let model = m.transformer().unwrap();
    let tok = gpt2_tokenizer();
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 23, 4], vec![17, 3], vec![40, 41, 42, 43, 44, 45]];
    let greedy = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![0],
        stop_strings: vec![],
    };
    // Greedy: every member of a group is the prompt's one-at-a-time continuation.
    let gens = generate_groups(&model, tok, &prompts, 2, &greedy, 1 << 20).unwrap();
    assert_eq!(gens.len(), 6);
    for (k, g) in gens.iter().enumerate() {
        let one = generate_text(&model, tok, &prompts[k / 2], &greedy, |_| Ok(())).unwrap();
        assert_eq!(g.ids, one.ids, "sequence {k}");
        assert_eq!(g.finish_reason, one.finish_reason);
    }
    // Sampled: each sequence draws its own stream, the same again for the same seed.
    let mut sampled = greedy.clone();
    sampled.sampling = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        seed: 11,
        ..Default::default()
    };
    let a = generate_groups(&model, tok, &prompts[..1], 4, &sampled, 1 << 20).unwrap();
    let b = generate_groups(&model, tok, &prompts[..1], 4, &sampled, 1 << 20).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.ids == y.ids));
    let distinct: std::collections::HashSet<&Vec<u32>> = a.iter().map(|g| &g.ids).collect();
    assert!(distinct.len() > 1, "a group's replies differ");
}

/// `chatforge rl` on the tiny chat base, a synthetic task, small groups.
fn rl_args(base: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "rl",
        "--model",
        base.to_str().unwrap(),
        "--task",
        "count_letters",
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "6",
        "--group",
        "4",
        "--prompts-per-step",
        "3",
        "--max-new-tokens",
        "6",
        "--iterations",
        "2",
        "--kl",
        "0.05",
        "--lora-rank",
        "4",
        "--lr",
        "1e-3",
        "--eval-problems",
        "8",
        "--set",
        "eval.every=3",
        "--set",
        "rl.train_problems=60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn rl(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&refs);
    assert_eq!(code, 0, "rl failed:\n{out}\n{err}");
    err
}

#[test]
fn rl_logs_rewards_draws_its_curve_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = chat_base_and_data(tmp.path());
    let straight = tmp.path().join("straight");
    let log = rl(&rl_args(&base, &straight, &[]));
    assert!(
        log.contains("rl task count_letters: 60 training problems, 8 held out"),
        "{log}"
    );
    let train = records(&straight, "train");
    assert_eq!(train.len(), 6);
    for k in [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "kl",
        "clip_ratio/region_mean",
    ] {
        assert!(
            train[0][k].is_number(),
            "train records carry {k}: {:?}",
            train[0]
        );
    }
    // Each batch serves two steps (rl.iterations): the second sees the same rewards.
    assert_eq!(train[0]["reward"], train[1]["reward"]);
    let val = records(&straight, "val");
    // Before the first step, then every 3 steps.
    let steps: Vec<i64> = val.iter().map(|v| v["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [0, 3, 6], "{val:?}");
    assert!(val.iter().all(|v| v["pass@1"].is_number()));
    assert!(straight.join("reward.png").exists());
    let card = std::fs::read_to_string(straight.join("adapter/README.md")).unwrap();
    assert!(
        card.contains("reinforcement learning on count_letters"),
        "{card}"
    );
    assert!(card.contains("pass@1"), "{card}");

    // Paused after step 4 (where the second batch's two steps end) and resumed: the same steps.
    let paused = tmp.path().join("paused");
    rl(&rl_args(&base, &paused, &["--set", "train.stop_at_step=4"]));
    // Its batches were reused twice: resuming with another count would draw other prompts.
    let p = paused.to_str().unwrap();
    let (code, _, err) = run(&["rl", "--resume", p, "--iterations", "3"]);
    assert!(code != 0 && err.contains("rl.iterations is 2"), "{err}");
    let resumed = ["rl".to_string(), "--resume".into(), p.into()];
    rl(&resumed);
    let (a, b) = (records(&straight, "train"), records(&paused, "train"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
        assert_eq!(x["reward"], y["reward"]);
    }
}

#[test]
fn rl_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = chat_base_and_data(tmp.path());
    let out = tmp.path().join("run");
    let bad = tmp.path().join("gsm.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"question\": \"x\", \"answer\": \"none\"}\n",
    )
    .unwrap();
    let (b, o) = (base.to_str().unwrap(), out.to_str().unwrap());
    let (d, g) = (data.to_str().unwrap(), bad.to_str().unwrap());
    let cases: [(&[&str], &str); 7] = [
        (
            &["--task", "poetry"],
            "expected gsm8k, arithmetic, spelling or count_letters",
        ),
        (&["--task", "gsm8k"], "needs problems: --data"),
        (
            &["--task", "spelling", "--data", d],
            "generates its own problems",
        ),
        (
            &["--task", "spelling", "--group", "1"],
            "rl.group = 1 is below",
        ),
        (
            &["--task", "spelling", "--clip", "1.5"],
            "rl.clip = 1.5 is outside",
        ),
        (
            &["--task", "spelling", "--set", "train.batch_tokens=16384"],
            "drop train.batch_tokens",
        ),
        // GSM8K records without a final number name the file and line.
        (&["--task", "gsm8k", "--data", g], "line 2"),
    ];
    for (extra, want) in cases {
        let args = [&["rl", "--model", b, "--out", o][..], extra].concat();
        let (code, stdout, err) = run(&args);
        assert_ne!(code, 0, "{args:?} should fail:\n{stdout}\n{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "nothing written for {args:?}");
    }
}
