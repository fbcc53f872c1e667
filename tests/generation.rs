//! The sampler, streamed text across UTF-8 boundaries, and stop strings.

mod common;

use candle_core::Device;
use chatforge::formats::LoadedModel;
use chatforge::infer::stream::TextStream;
use chatforge::infer::{generate_text, FinishReason, GenerateOptions, Sampler, SamplingParams};
use chatforge::tokenizer::Tokenizer;
use common::*;

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 100.0).sin() * 4.0)
        .collect()
}

fn draw(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(params);
    (0..n).map(|_| s.sample(logits, &[])).collect()
}

#[test]
fn seeded_sampling_is_reproducible() {
    let logits = random_logits(500, 1);
    let p = |seed| SamplingParams {
        temperature: 1.0,
        seed,
        ..Default::default()
    };
    assert_eq!(draw(p(7), &logits, 50), draw(p(7), &logits, 50));
    assert_ne!(draw(p(7), &logits, 50), draw(p(8), &logits, 50));
}

#[test]
fn top_k_one_is_greedy_and_filters_narrow_the_choice() {
    let logits = random_logits(500, 2);
    let greedy = chatforge::infer::sampler::argmax(&logits);
    let k1 = SamplingParams {
        temperature: 1.5,
        top_k: 1,
        seed: 3,
        ..Default::default()
    };
    assert!(draw(k1, &logits, 20).iter().all(|&t| t == greedy));
    assert!(draw(SamplingParams::greedy(), &logits, 5)
        .iter()
        .all(|&t| t == greedy));
    // top-k 5: only the 5 best ids ever come out.
    let mut best: Vec<u32> = (0..500).collect();
    best.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let k5 = SamplingParams {
        temperature: 1.0,
        top_k: 5,
        seed: 4,
        ..Default::default()
    };
    assert!(draw(k5, &logits, 200).iter().all(|t| best[..5].contains(t)));
    // min-p 0.5 with one clear favourite: always the favourite.
    let mut peaked = vec![0f32; 100];
    peaked[42] = 5.0;
    let mp = SamplingParams {
        temperature: 1.0,
        min_p: 0.5,
        seed: 5,
        ..Default::default()
    };
    assert!(draw(mp, &peaked, 50).iter().all(|&t| t == 42));
    // top-p 0.5 with the same favourite (p ~ 0.6): always the favourite.
    let tp = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        seed: 6,
        ..Default::default()
    };
    assert!(draw(tp, &peaked, 50).iter().all(|&t| t == 42));
    // Repetition penalty: a favourite already in the context loses to the runner-up.
    let mut two = vec![0f32; 10];
    two[1] = 2.0;
    two[2] = 1.5;
    let mut s = Sampler::new(SamplingParams {
        temperature: 0.0,
        repetition_penalty: 1.5,
        ..Default::default()
    });
    assert_eq!(s.sample(&two, &[1]), 2);
    assert_eq!(s.sample(&two, &[3]), 1);
}

#[test]
fn streamed_text_never_splits_a_character() {
    let tok = Tokenizer::from_gpt2_files(
        &shared_data().join("gpt2_encoder.json"),
        &shared_data().join("gpt2_vocab.bpe"),
    )
    .unwrap();
    let text = "héllo 東京タワー 🎉👩‍👩‍👧 naïve – done";
    let ids = tok.encode(text).unwrap();
    let mut s = TextStream::new(&tok);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(s.push(id).unwrap());
    }
    pieces.push(s.finish().unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert!(
        pieces.iter().filter(|p| p.is_empty()).count() > 0,
        "some tokens end mid-character"
    );
}

#[test]
fn stop_strings_cut_the_text_and_streaming_agrees() {
    let dir = fixtures().join("gpt2-tiny-eval");
    let m = LoadedModel::load(&dir, &Device::Cpu).unwrap();
    let model = m.transformer().unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let prompt = tok.encode("ROMEO: ").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut streamed = String::new();
    let full = generate_text(&model, tok, &prompt, &opts, |p| {
        streamed.push_str(p);
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, full.text);
    assert_eq!(full.finish_reason, FinishReason::Length);
    assert_eq!(full.ids.len(), 20);
    // Stop at a piece of that text: the same run ends just before it.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let mut streamed = String::new();
    let opts = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..opts
    };
    let g = generate_text(&model, tok, &prompt, &opts, |p| {
        streamed.push_str(p);
        Ok(())
    })
    .unwrap();
    assert_eq!(g.text, full.text[..cut], "stop string {stop:?}");
    assert_eq!(streamed, g.text, "no part of the stop string was streamed");
    assert_eq!(g.finish_reason, FinishReason::Stop);
}
