//! Preference tuning (DPO, IPO) against TRL's formulas (fixtures from tools/make_dpo_fixtures.py):
//! the loss, the reward metrics and every trainable gradient of a tiny GPT-2 and a tiny Llama, full
//! and LoRA; the pair files (TRL's records, HH-RLHF transcripts) and their errors; and `chatforge
//! dpo` end to end: it learns the preference, logs TRL's metrics, resumes exactly, refuses bad input.

mod common;

use candle_core::{DType, Device, Tensor};
use chatforge::config::{DpoLoss, DpoSection};
use chatforge::data::preference::{build_pair_examples, load_pairs, parse_transcript};
use chatforge::data::sft::Example;
use chatforge::formats::LoadedModel;
use chatforge::train::dpo::{objective, reference_logps, DpoStats, PairRows};
use common::*;
use std::collections::HashMap;
use std::path::Path;

/// The fixture's rows as pairs (chosen rows first), for `reference_logps`.
fn fixture_pairs(exp: &HashMap<String, Tensor>) -> Vec<chatforge::data::preference::PairExample> {
    let ids = exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let targets = exp["targets"].to_vec2::<i64>().unwrap();
    // Each row without its right padding (the padding's targets are all ignored).
    let row = |i: usize| {
        let len = targets[i].iter().rposition(|&t| t >= 0).unwrap() + 1;
        Example {
            inputs: ids[i][..len].to_vec(),
            targets: targets[i][..len].to_vec(),
        }
    };
    let b = ids.len() / 2;
    (0..b)
        .map(|i| chatforge::data::preference::PairExample {
            chosen: row(i),
            rejected: row(b + i),
        })
        .collect()
}

fn check_case(name: &str, case: &str) {
    let exp = candle_core::safetensors::load(
        fixtures().join(format!("{name}-dpo-expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    // The policy and the reference of the case, as the fixture script builds them.
    let (base, params, policy, reference) = tuning_case(name, case);
    // The reference's log-probabilities, as the run caches them.
    let pairs = fixture_pairs(&exp);
    let refs = reference_logps(&reference, &pairs, 2, 0, |_| true, &mut |_| Ok(())).unwrap();
    let flat: Vec<f64> = refs
        .iter()
        .map(|r| r[0])
        .chain(refs.iter().map(|r| r[1]))
        .collect();
    let want: Vec<f32> = exp[&format!("{case}.ref_logps")].to_vec1().unwrap();
    for (a, b) in flat.iter().zip(&want) {
        assert!(
            (a - *b as f64).abs() < 1e-4,
            "{name} {case}: reference log-prob {a} vs {b}"
        );
    }
    let pair_refs: Vec<&_> = pairs.iter().collect();
    let rows: PairRows = chatforge::train::dpo::pair_rows(&pair_refs, &refs);
    let x = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let y = &exp["targets"];
    for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo] {
        let cfg = DpoSection {
            beta: 0.1,
            loss,
            ref_model: String::new(),
        };
        let (surrogate, stats): (Tensor, DpoStats) =
            objective(&policy, &x, y, &rows, &cfg).unwrap();
        let key = format!("{case}.{loss}");
        let want: Vec<f32> = exp[&format!("{key}.metrics")].to_vec1().unwrap();
        let means = stats.means();
        for (k, w) in chatforge::train::dpo::METRICS.iter().zip(&want) {
            let got = means[*k].as_f64().unwrap();
            assert!(
                (got - *w as f64).abs() < 1e-4,
                "{name} {key}: {k} {got} vs TRL's {w}"
            );
        }
        // The loss and every trainable gradient, in HF (full) or PEFT (LoRA) names.
        let grads = policy.backward(&surrogate).unwrap();
        check_tuning_gradients(
            name,
            &key,
            case,
            &base,
            &params,
            &exp,
            stats.mean_loss(),
            grads,
        );
    }
}

#[test]
fn gpt2_dpo_and_ipo_match_trl() {
    check_case("gpt2-tiny", "full");
    check_case("gpt2-tiny", "lora");
}

#[test]
fn llama_dpo_and_ipo_match_trl() {
    check_case("llama-tiny", "full");
    check_case("llama-tiny", "lora");
}

#[test]
fn hh_rlhf_transcripts_become_pairs() {
    let m =
        parse_transcript("\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant:")
            .unwrap();
    let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(
        (m[0].content.as_str(), m[3].content.as_str()),
        ("hi there", "")
    );
    // The whole shared file loads: every pair shares its prompt and differs in the last reply.
    let pairs = load_pairs(&shared_data().join("hh_rlhf_harmless_base_test.jsonl")).unwrap();
    assert_eq!(pairs.len(), 2312);
    let first = &pairs[0];
    assert_eq!(
        first.prompt[0].content,
        "what are some pranks with a pen i can do?"
    );
    assert_eq!(first.prompt.last().unwrap().role, "user");
    assert_eq!((first.chosen.len(), first.rejected.len()), (1, 1));
    assert!(first.chosen[0].content.starts_with("No, sorry!"));
    assert_ne!(first.chosen, first.rejected);
    // Line 1255 parts before its last reply: the prompt is what both share, the replies the rest.
    let odd = &pairs[1254];
    assert_eq!(odd.rejected.len(), 1);
    assert_eq!(odd.chosen[0].role, "assistant");
    assert!(odd.rejected[0]
        .content
        .starts_with("A drag king is the opposite"));
}

#[test]
fn trl_records_and_their_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("p.jsonl");
    let write = |lines: &[&str]| std::fs::write(&f, lines.join("\n")).unwrap();
    write(&[
        r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5"}"#,
        r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "Go away."}]}"#,
        r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]}"#,
    ]);
    let p = load_pairs(&f).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(
        (p[0].prompt[0].role.as_str(), p[0].chosen[0].role.as_str()),
        ("user", "assistant")
    );
    assert_eq!(p[1].prompt.len(), 2);
    assert_eq!(
        (p[2].prompt.len(), p[2].rejected[0].content.as_str()),
        (1, "No.")
    );
    let fails = [
        (r#"{"prompt": "a", "chosen": "b"}"#, "no 'rejected'"),
        (
            r#"{"prompt": "a", "chosen": "b", "rejected": "b"}"#,
            "the same reply",
        ),
        (
            r#"{"prompt": " ", "chosen": "b", "rejected": "c"}"#,
            "empty prompt",
        ),
        (
            r#"{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: c"}"#,
            "part at a user turn",
        ),
        (
            r#"{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"}"#,
            "no reply of its own",
        ),
        (
            r#"{"prompt": "a", "chosen": 3, "rejected": "c"}"#,
            "neither a string",
        ),
        (r#"{"prompt": "a", "chosen": "b", "#, "malformed JSON"),
    ];
    for (row, want) in fails {
        write(&[r#"{"prompt": "fine", "chosen": "x", "rejected": "y"}"#, row]);
        let e = load_pairs(&f).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains(want) && e.contains("p.jsonl"),
            "{row}: {e}"
        );
    }
}

#[test]
fn pair_tokens_are_the_reply_after_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = chat_base_and_data(tmp.path());
    let m = LoadedModel::load(&base, &Device::Cpu).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let format = chatforge::chat_template::ChatFormat::new(tok, m.cfg.eos_token_id).unwrap();
    let f = tmp.path().join("p.jsonl");
    std::fs::write(
        &f,
        r#"{"prompt": "Spell the word cat.", "chosen": "c-a-t", "rejected": "dog"}"#,
    )
    .unwrap();
    let pairs = load_pairs(&f).unwrap();
    let (ex, stats) = build_pair_examples(&format, tok, &pairs, 256).unwrap();
    assert_eq!((ex.len(), stats.truncated, stats.dropped), (1, 0, 0));
    let prompt = format.prompt_ids(tok, &pairs[0].prompt).unwrap();
    for (side, reply) in [(&ex[0].chosen, "c-a-t"), (&ex[0].rejected, "dog")] {
        assert!(side.inputs.starts_with(&prompt));
        // Exactly the reply's tokens (and the end of the turn) are trained on.
        let first = side.targets.iter().position(|&t| t >= 0).unwrap();
        assert_eq!(first + 1, prompt.len());
        assert!(side.targets[first..].iter().all(|&t| t >= 0));
        let ids: Vec<u32> = side.targets[first..].iter().map(|&t| t as u32).collect();
        let text = tok.decode(&ids).unwrap();
        assert!(text.starts_with(reply), "{text:?}");
    }
    // A context the prompt fills: the prompt keeps its end, half the row, the replies the rest.
    let context = prompt.len() - 2;
    let (ex, stats) = build_pair_examples(&format, tok, &pairs, context).unwrap();
    assert_eq!((ex.len(), stats.truncated, stats.dropped), (1, 1, 0));
    let keeps: Vec<usize> = [&ex[0].chosen, &ex[0].rejected]
        .iter()
        .map(|side| {
            assert!(side.inputs.len() <= context);
            let keep = side.targets.iter().position(|&t| t >= 0).unwrap() + 1;
            assert!(keep >= context.div_ceil(2) && keep < prompt.len());
            assert_eq!(side.inputs[..keep], prompt[prompt.len() - keep..]);
            keep
        })
        .collect();
    assert_eq!(keeps[0], keeps[1], "both sides keep the same prompt");
}

fn dpo(args: &[&str]) -> String {
    let (code, out, err) = run(&[&["dpo"], args].concat());
    assert_eq!(code, 0, "dpo failed:\n{out}\n{err}");
    err
}

#[test]
fn dpo_learns_the_preference_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, pairs) = chat_base_and_pairs(tmp.path());
    let common = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--model",
            base.to_str().unwrap(),
            "--data",
            pairs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "30",
            "--batch-size",
            "4",
            "--lora-rank",
            "4",
            "--lr",
            "5e-3",
            "--beta",
            "0.5",
            "--val-fraction",
            "0.2",
            "--set",
            "eval.every=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let straight = tmp.path().join("straight");
    let log = dpo(&common(&straight, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(
        log.contains("96 training pairs") && log.contains("24 held out"),
        "{log}"
    );
    assert!(straight.join("reference_logps.json").exists());
    let train = records(&straight, "train");
    assert_eq!(train.len(), 30);
    for k in chatforge::train::dpo::METRICS {
        assert!(train[0][k].is_number(), "train records carry {k}");
    }
    // The first step's policy is the reference: the margin is zero, the loss log 2.
    assert!((train[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-3);
    let val = records(&straight, "val");
    let (first, last) = (&val[0], val.last().unwrap());
    let acc = |r: &serde_json::Value| r["rewards/accuracies"].as_f64().unwrap();
    let margin = |r: &serde_json::Value| r["rewards/margins"].as_f64().unwrap();
    assert!(
        margin(last) > margin(first) && margin(last) > 0.0,
        "{val:?}"
    );
    assert!(acc(last) > 0.5, "held-out reward accuracy {}", acc(last));

    // Paused and resumed: the same steps, bit for bit (the reference read back from its file).
    let paused = tmp.path().join("paused");
    let args = common(&paused, &["--set", "train.stop_at_step=15"]);
    dpo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    dpo(&["--resume", paused.to_str().unwrap()]);
    let losses = |run: &Path| -> Vec<f64> {
        records(run, "train")
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&straight), losses(&paused));
    let w = |run: &Path| {
        candle_core::safetensors::load(run.join("adapter/adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
    };
    let (w1, w2) = (w(&straight), w(&paused));
    for (k, t) in &w1 {
        assert_eq!(max_abs_diff(t, &w2[k]), 0.0, "{k}");
    }
    let card = std::fs::read_to_string(straight.join("adapter/README.md")).unwrap();
    assert!(card.contains("- \"dpo\""), "the card is tagged dpo: {card}");
    // A DPO run goes on as one: `sft --resume` refuses it and says what to run.
    let (code, _, err) = run(&["sft", "--resume", paused.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a dpo run") && err.contains("chatforge dpo --resume"),
        "{err}"
    );
    assert!(
        card.contains("held-out reward accuracy")
            && card.contains("Tuned on preference pairs (DPO, beta 0.5)"),
        "{card}"
    );
}

#[test]
fn dpo_input_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, pairs) = chat_base_and_pairs(tmp.path());
    let out = tmp.path().join("x");
    let (b, p, o) = (
        base.to_str().unwrap(),
        pairs.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let fail = |args: &[&str], want: &[&str]| {
        let (code, _, err) = run(&[&["dpo"], args].concat());
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!err.contains("panicked"), "{err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: expected '{w}' in: {err}");
        }
    };
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    fail(
        &["--model", b, "--data", bad.to_str().unwrap(), "--out", o],
        &["bad.jsonl", "line 2", "rejected"],
    );
    fail(
        &["--model", b, "--data", p, "--out", o, "--loss", "hinge"],
        &["hinge", "sigmoid or ipo"],
    );
    fail(
        &["--model", b, "--data", p, "--out", o, "--beta", "0"],
        &["dpo.beta"],
    );
    // A reference of another vocabulary.
    let gpt2 = fixtures().join("gpt2-tiny");
    fail(
        &[
            "--model",
            b,
            "--data",
            p,
            "--out",
            o,
            "--ref-model",
            gpt2.to_str().unwrap(),
            "--max-steps",
            "1",
        ],
        &["dpo.ref_model", "vocabulary"],
    );
    // A folder of the user's is never trained into.
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let m = mine.to_str().unwrap();
    fail(
        &["--model", b, "--data", p, "--out", m, "--max-steps", "1"],
        &["mine"],
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "mine"
    );
}
