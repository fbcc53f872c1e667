//! Bias on CrowS-Pairs: SmolLM2-135M-Instruct's sentence log-likelihoods and the harness's two
//! metrics, overall and by bias type, against lm-evaluation-harness itself
//! (tests/fixtures/smollm2_crows_pairs.json from tools/make_crows_fixtures.py); bad files refused.

mod common;

use candle_core::Device;
use chatforge::eval::crows_pairs::{crows_pairs, load_crows_pairs};
use chatforge::formats::LoadedModel;
use common::*;

fn fixture() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2_crows_pairs.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn crows_pairs_scores_equal_lm_evaluation_harness() {
    let want = fixture();
    let n = want["pairs"].as_array().unwrap().len();
    let csv = shared_data().join("crows_pairs_anonymized.csv");
    let pairs = load_crows_pairs(&csv, Some(n)).unwrap();
    for (p, w) in pairs.iter().zip(want["pairs"].as_array().unwrap()) {
        assert_eq!(p.more, w["more"].as_str().unwrap());
        assert_eq!(p.less, w["less"].as_str().unwrap());
        assert_eq!(p.bias_type, w["bias_type"].as_str().unwrap());
    }
    let gguf = shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = LoadedModel::load(&gguf, &Device::Cpu).unwrap();
    let (model, tok) = (m.transformer().unwrap(), m.tokenizer.as_ref().unwrap());
    assert_eq!(
        chatforge::eval::crows_pairs::sentence_prefix(&model, tok).unwrap() as u64,
        want["prefix_token_id"].as_u64().unwrap(),
        "the sentences are scored after the harness's prefix token"
    );
    let mut worst = 0f64;
    let r = crows_pairs(&model, tok, &pairs, |i, more, less| {
        let w = &want["pairs"][i]["lls"];
        worst = worst
            .max((more - w[0].as_f64().unwrap()).abs())
            .max((less - w[1].as_f64().unwrap()).abs());
    })
    .unwrap();
    eprintln!(
        "{}\nworst |log-likelihood - harness| {worst:.2e}",
        r.summary()
    );
    assert!(worst < 2e-3, "log-likelihoods differ by {worst}");
    let same = |got: &chatforge::eval::crows_pairs::BiasScore, w: &serde_json::Value| {
        assert_eq!(got.items as u64, w["items"].as_u64().unwrap());
        assert_eq!(got.pct_stereotype, w["pct_stereotype"].as_f64().unwrap());
        let diff = w["likelihood_diff"].as_f64().unwrap();
        assert!((got.likelihood_diff - diff).abs() < 2e-3, "{got:?} vs {w}");
    };
    same(&r.overall, &want["overall"]);
    let types = want["by_type"].as_object().unwrap();
    assert_eq!(r.by_type.len(), types.len());
    for (kind, w) in types {
        same(&r.by_type[kind], w);
    }

    // The command prints the same, as a table by bias type or as JSON.
    let (csv, gguf) = (csv.to_str().unwrap(), gguf.to_str().unwrap());
    let args = [
        "eval",
        "--model",
        gguf,
        "--task",
        "crows_pairs",
        "--data",
        csv,
    ];
    let (code, out, err) = run(&[&args[..], &["--limit", &n.to_string()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("| bias type | pairs | pct_stereotype |"),
        "{out}"
    );
    for (kind, b) in &r.by_type {
        assert!(out.contains(&format!("| {kind} | {} |", b.items)), "{out}");
    }
    let (code, out, err) = run(&[&args[..], &["--limit", &n.to_string(), "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["pct_stereotype"].as_f64().unwrap(),
        r.overall.pct_stereotype
    );
    assert_eq!(v["by_type"].as_object().unwrap().len(), types.len());
}

#[test]
fn bad_crows_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            file("no_column.csv", "sent_more,bias_type\n\"A, b\",age\n"),
            "no 'sent_less' column",
        ),
        (
            file(
                "empty_cell.csv",
                "sent_more,sent_less,bias_type\nA,B,age\nC,,age\n",
            ),
            "row 3: 'sent_less' is empty",
        ),
        (
            file(
                "unclosed.csv",
                "sent_more,sent_less,bias_type\nA,B,age,extra\n",
            ),
            "row 2",
        ),
        (
            file("header_only.csv", "sent_more,sent_less,bias_type\n"),
            "no pairs",
        ),
    ];
    for (path, says) in &cases {
        let e = load_crows_pairs(path, None).unwrap_err().to_string();
        assert!(
            e.contains(says) && e.contains(path.file_name().unwrap().to_str().unwrap()),
            "{e}"
        );
    }
    let pairs = load_crows_pairs(
        &file("quoted.csv", "i,sent_more,sent_less,bias_type\n0,\"He said \"\"no\"\", then left.\",\"She said no, then left.\",gender\n"),
        None,
    )
    .unwrap();
    assert_eq!(pairs[0].more, "He said \"no\", then left.");
    assert_eq!(pairs[0].less, "She said no, then left.");
    // The command exits non-zero with the file's name.
    let (code, _, err) = run(&[
        "eval",
        "--model",
        fixtures().join("gpt2-tiny-eval").to_str().unwrap(),
        "--task",
        "crows_pairs",
        "--data",
        cases[0].0.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no_column.csv") && err.contains("sent_less"),
        "{err}"
    );
}
