//! A real pretrained chat model from a GGUF file: SmolLM2-135M-Instruct (Q4_1, in ../shared/data),
//! dequantised, against transformers on the same dequantised weights (tests/fixtures/smollm2_greedy.json
//! from tools/make_fixtures.py): chat-template prompt ids and the first 32 greedy tokens.

mod common;

use candle_core::Device;
use chatforge::chat::ChatModel;
use chatforge::chat_template::Message;
use chatforge::formats::LoadedModel;
use chatforge::infer::{generate_text, GenerateOptions, SamplingParams};
use common::*;
use std::sync::OnceLock;

fn smollm2() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        LoadedModel::load(
            &shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
            &Device::Cpu,
        )
        .unwrap()
    })
}

/// The first `n` greedy tokens after `prompt` (no stop tokens).
fn greedy(
    model: &chatforge::model::Transformer,
    tok: &chatforge::tokenizer::Tokenizer,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    generate_text(model, tok, prompt, &opts, |_| Ok(()))
        .unwrap()
        .ids
}

fn cases() -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2_greedy.json")).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_metadata_becomes_the_llama_config() {
    let c = &smollm2().cfg;
    assert_eq!(
        (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim),
        (30, 576, 9, 3, 64)
    );
    assert_eq!(
        (c.vocab_size, c.intermediate, c.context),
        (49152, 1536, 8192)
    );
    assert!(c.tie_embeddings);
    assert_eq!(c.rope_theta, 100_000.0);
}

#[test]
fn chat_template_and_tokenizer_give_transformers_prompt_ids() {
    let m = smollm2();
    let model = m.transformer().unwrap();
    let chat = ChatModel::new(&model, m.tokenizer.as_ref().unwrap()).unwrap();
    for case in cases() {
        let want = ids(&case["prompt_ids"]);
        let got = match case["user"].as_str() {
            Some(user) => chat.prompt_ids(&[Message::new("user", user)]).unwrap(),
            None => m
                .tokenizer
                .as_ref()
                .unwrap()
                .encode(case["prompt"].as_str().unwrap())
                .unwrap(),
        };
        assert_eq!(got, want, "prompt ids of {:?}", case["prompt"]);
    }
}

#[test]
fn greedy_tokens_equal_transformers_and_it_knows_paris() {
    let m = smollm2();
    let model = m.transformer().unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    for case in cases() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let got = greedy(&model, tok, &prompt, want.len());
        assert_eq!(
            got,
            want,
            "greedy continuation of {:?}: ours {:?}",
            case["prompt"],
            tok.decode(&got).unwrap()
        );
    }
    let chat = ChatModel::new(&model, tok).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 24,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let g = chat
        .reply(
            &[Message::new("user", "What is the capital of France?")],
            &opts,
            |_| Ok(()),
        )
        .unwrap();
    eprintln!("SmolLM2: {}", g.text);
    assert!(g.text.contains("Paris"), "{}", g.text);
    assert_eq!(
        g.finish_reason,
        chatforge::infer::FinishReason::Stop,
        "the reply should end with <|im_end|>"
    );
}

#[test]
fn chat_repl_keeps_the_conversation_and_saves_it() {
    let m = smollm2();
    let model = m.transformer().unwrap();
    let chat = ChatModel::new(&model, m.tokenizer.as_ref().unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("conv.json");
    let input = format!(
        "/system You answer in one short sentence.\nWhat is the capital of France?\n/save {}\n/reset\n/bogus\n/quit\nnever read\n",
        saved.display()
    );
    let mut out = Vec::new();
    let opts = GenerateOptions {
        max_new_tokens: 24,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    chatforge::chat::repl(&chat, None, &opts, std::io::Cursor::new(input), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("Paris"), "{out}");
    assert!(
        out.contains("(conversation cleared)") && out.contains("unknown command /bogus"),
        "{out}"
    );
    let conv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let roles: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
}

#[test]
fn multiple_choice_log_likelihoods_equal_transformers() {
    use chatforge::eval::tasks::{load_arc, load_hellaswag, multiple_choice};
    let m = smollm2();
    let model = m.transformer().unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2_multiple_choice.json")).unwrap(),
    )
    .unwrap();
    for (task, items) in [
        (
            "hellaswag",
            load_hellaswag(&shared_data().join("hellaswag_val.jsonl"), Some(25)).unwrap(),
        ),
        (
            "arc_easy",
            load_arc(&shared_data().join("arc_easy_test.jsonl"), Some(25)).unwrap(),
        ),
    ] {
        let want = &fixture[task];
        let mut worst = 0f64;
        let r = multiple_choice(&model, tok, task, &items, |i, lls| {
            let w = &want["items"][i]["lls"];
            for (j, ll) in lls.iter().enumerate() {
                worst = worst.max((ll - w[j].as_f64().unwrap()).abs());
            }
        })
        .unwrap();
        eprintln!(
            "{task}: acc {} acc_norm {}, worst |log-likelihood - transformers| {worst:.2e}",
            r.acc, r.acc_norm
        );
        assert!(worst < 2e-3, "{task}: log-likelihoods differ by {worst}");
        assert_eq!(r.acc, want["acc"].as_f64().unwrap(), "{task} acc");
        assert_eq!(
            r.acc_norm,
            want["acc_norm"].as_f64().unwrap(),
            "{task} acc_norm"
        );
    }
}

#[test]
fn quantized_decoding_follows_the_f32_model() {
    let m = smollm2();
    assert_eq!(
        m.quantized,
        Some(candle_core::quantized::GgmlDType::Q4_1),
        "a Q4_1 file is a quantized model"
    );
    let (dense, quant) = (m.transformer().unwrap(), m.inference_transformer().unwrap());
    let tok = m.tokenizer.as_ref().unwrap();
    for case in cases() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        // One decoding step through the 4-bit weights (the file's own) times 8-bit activations,
        // as llama.cpp multiplies them, and the file's 8-bit output projection against the f32
        // weights.
        let (mut c1, _) = dense.prefill(&prompt).unwrap();
        let (mut c2, _) = quant.prefill(&prompt).unwrap();
        let x = candle_core::Tensor::new(&[[want[0]]], &Device::Cpu).unwrap();
        let pos = prompt.len();
        let l1 = dense.forward_last(&x, pos, Some(&mut c1)).unwrap();
        let l2 = quant.forward_last(&x, pos, Some(&mut c2)).unwrap();
        let scale = l1
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rel = max_abs_diff(&l1, &l2) / scale;
        // 8-bit activations cost most where one channel dwarfs the rest of its block of 32
        // (SmolLM2's hidden states have such channels): up to 6e-2 of the largest logit here.
        assert!(
            rel < 0.1,
            "4-bit logits differ from f32 by {rel} of the largest"
        );
        assert!(rel > 0.0, "the 4-bit weights were not used");
        let got = greedy(&quant, tok, &prompt, want.len());
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "4-bit decoding: logits within {rel:.1e} of f32, {same}/{} greedy tokens as transformers: {:?}",
            want.len(),
            tok.decode(&got).unwrap()
        );
        // The prompt runs in f32, so the first token is exact; a factual answer stays exact.
        assert_eq!(got[0], want[0]);
        if case["prompt"]
            .as_str()
            .unwrap()
            .contains("capital of France")
        {
            assert_eq!(got, want, "{:?}", tok.decode(&got));
        }
    }
}
