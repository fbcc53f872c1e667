//! Task scoring against hand computations on a small real model, and the task file formats.

mod common;

use candle_core::{Device, Tensor, D};
use chatforge::eval::tasks::{
    final_number, load_arc, load_hellaswag, multiple_choice, score_continuations, McItem,
};
use chatforge::formats::LoadedModel;
use common::*;

#[test]
fn continuation_scores_equal_a_full_forward_by_hand() {
    let m = LoadedModel::load(&fixtures().join("gpt2-tiny-eval"), &Device::Cpu).unwrap();
    let model = m.transformer().unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let (ctx, conts) = (
        "To be, or not to be:",
        vec![" that is the question.".to_string(), " no".to_string()],
    );
    let scores = score_continuations(&model, tok, ctx, &conts).unwrap();
    for (c, (ll, greedy)) in conts.iter().zip(&scores) {
        // By hand: one forward over context + continuation, log-softmax, pick the continuation ids.
        let (a, b) = (tok.encode(ctx).unwrap(), tok.encode(c).unwrap());
        let all: Vec<u32> = a.iter().chain(&b).copied().collect();
        let x = Tensor::from_slice(&all, (1, all.len()), &Device::Cpu).unwrap();
        let logp = candle_nn::ops::log_softmax(&model.forward(&x, 0, None).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let rows: Vec<Vec<f32>> = logp.to_vec2().unwrap();
        let want: f64 = b
            .iter()
            .enumerate()
            .map(|(j, &t)| rows[a.len() - 1 + j][t as usize] as f64)
            .sum();
        let want_greedy = b
            .iter()
            .enumerate()
            .all(|(j, &t)| chatforge::infer::sampler::argmax(&rows[a.len() - 1 + j]) == t);
        assert!((ll - want).abs() < 1e-4, "{c:?}: {ll} vs {want}");
        assert_eq!(*greedy, want_greedy);
    }
    // acc picks the highest sum, acc_norm the highest sum per byte: a hand-made item where they differ.
    let (l0, l1) = (scores[0].0, scores[1].0);
    let item = McItem {
        context: ctx.into(),
        choices: conts.clone(),
        gold: 0,
    };
    let r = multiple_choice(&model, tok, "hand", &[item], |_, _| {}).unwrap();
    assert_eq!(r.acc, if l0 >= l1 { 1.0 } else { 0.0 });
    let per_byte = (l0 / conts[0].len() as f64, l1 / conts[1].len() as f64);
    assert_eq!(r.acc_norm, if per_byte.0 >= per_byte.1 { 1.0 } else { 0.0 });
}

#[test]
fn task_files_load_in_their_published_formats() {
    let h = load_hellaswag(&shared_data().join("hellaswag_val.jsonl"), Some(3)).unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(
        h[0].context,
        "Roof shingle removal: A man is sitting on a roof. he"
    );
    assert_eq!(h[0].choices[3], " starts pulling up roofing on a roof.");
    assert_eq!(h[0].gold, 3);
    let a = load_arc(&shared_data().join("arc_challenge_test.jsonl"), Some(2)).unwrap();
    assert!(a[0].context.starts_with("Question: ") && a[0].context.ends_with("\nAnswer:"));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"query\": \"Question: x\", \"choices\": [\"a\", \"b\"], \"gold\": 5}\n",
    )
    .unwrap();
    let e = load_arc(&bad, None).err().unwrap().to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 1") && e.contains("gold"),
        "{e}"
    );
}

#[test]
fn gsm8k_final_numbers() {
    assert_eq!(
        final_number("She makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18").as_deref(),
        Some("18")
    );
    assert_eq!(final_number("#### 1,234").as_deref(), Some("1234"));
    assert_eq!(final_number("The answer is $70.").as_deref(), Some("70"));
    assert_eq!(
        final_number("It drops by -3 then 12.5 total.").as_deref(),
        Some("12.5")
    );
    assert_eq!(final_number("no digits"), None);
}
