//! The Transformer against transformers (fixtures from tools/make_fixtures.py): logits, loss and
//! gradients of every parameter, for a GPT-2 and a Llama (GQA, untied) model; and save/load round trips.

mod common;

use candle_core::{DType, Device, Tensor};
use chatforge::formats::{save_model_dir, Library, LoadedModel, ModelCard};
use chatforge::ops::loss::cross_entropy;
use common::*;

fn check_against_reference(name: &str) {
    let ReferenceCase {
        model: m,
        expected: exp,
        ids,
        params,
        transformer: mut model,
    } = reference_case(name);
    let targets = &exp["targets"];

    // Logits and loss.
    let logits = model.forward(&ids, 0, None).unwrap();
    let d = max_abs_diff(&logits, &exp["logits"]);
    eprintln!("{name}: max |logits - transformers| = {d:.3e}");
    assert!(d < 1e-4, "{name}: logits differ by {d}");
    // Without gradients (inference), attention runs fused from the start of the sequence, RoPE
    // applied to the projection's rows, and SwiGLU is one pass.
    let inference = m.transformer().unwrap().forward(&ids, 0, None).unwrap();
    let d = max_abs_diff(&inference, &exp["logits"]);
    eprintln!("{name}: max |inference logits - transformers| = {d:.3e}");
    assert!(d < 1e-4, "{name}: inference logits differ by {d}");
    // The loss three times: from the logits above; as `Transformer::loss` computes it (the output
    // projection fused with the loss, its logits never leaving the op); and so in training mode,
    // where a block is one fused node whose weight gradients `Transformer::backward` collects.
    let composed = cross_entropy(&logits, targets).unwrap();
    let grads = composed.backward().unwrap();
    check_loss_and_gradients(
        name,
        "logits + cross_entropy",
        &m.cfg,
        &params,
        &exp,
        &composed,
        grads,
    );
    let fused = model.loss(&ids, targets).unwrap();
    let grads = model.backward(&fused).unwrap();
    check_loss_and_gradients(
        name,
        "Transformer::loss",
        &m.cfg,
        &params,
        &exp,
        &fused,
        grads,
    );
    model.set_training(true);
    let train = model.loss(&ids, targets).unwrap();
    let qkv = params.vars["h.0.attn.qkv.weight"].as_tensor();
    let fused_block = train.backward().unwrap().get(qkv).is_none();
    assert!(
        fused_block,
        "{name}: in training mode the blocks run as fused nodes"
    );
    let train = model.loss(&ids, targets).unwrap();
    let grads = model.backward(&train).unwrap();
    let path = "Transformer::loss, training mode";
    check_loss_and_gradients(name, path, &m.cfg, &params, &exp, &train, grads);
}

#[test]
fn gpt2_matches_transformers() {
    check_against_reference("gpt2-tiny");
}

#[test]
fn llama_gqa_untied_matches_transformers() {
    check_against_reference("llama-tiny");
}

#[test]
fn incremental_decoding_with_kv_cache_equals_full_forward() {
    for name in ["gpt2-tiny", "llama-tiny"] {
        let (model, ids, full, mut cache) = decoding_case(name);
        // A 5-token prefill, then one token at a time.
        let mut rows = vec![model
            .forward(&ids.narrow(1, 0, 5).unwrap(), 0, Some(&mut cache))
            .unwrap()];
        // A copy of the cache, taken where it has room to spare, goes on with other tokens (as
        // the scoring of several continuations of one context does) while the original goes on
        // with the real ones: each must see its own sequence only.
        let other = Tensor::new(&[[7u32, 3]], &Device::Cpu).unwrap();
        let (mut fork, mut forked) = (None, Vec::new());
        for t in 5..ids.dim(1).unwrap() {
            if t == 6 {
                let mut c = cache.clone();
                let x = other.narrow(1, 0, 1).unwrap();
                forked.push(model.forward(&x, 6, Some(&mut c)).unwrap());
                fork = Some(c);
            }
            rows.push(
                model
                    .forward(&ids.narrow(1, t, 1).unwrap(), t, Some(&mut cache))
                    .unwrap(),
            );
        }
        let inc = Tensor::cat(&rows, 1).unwrap();
        let d = max_abs_diff(&full, &inc);
        assert!(d < 1e-5, "{name}: cached decoding differs by {d}");
        let x = other.narrow(1, 1, 1).unwrap();
        forked.push(model.forward(&x, 7, fork.as_mut()).unwrap());
        let branch = Tensor::cat(&[&ids.narrow(1, 0, 6).unwrap(), &other], 1).unwrap();
        let want = model
            .forward(&branch, 0, None)
            .unwrap()
            .narrow(1, 6, 2)
            .unwrap();
        let d = max_abs_diff(&Tensor::cat(&forked, 1).unwrap(), &want);
        assert!(d < 1e-5, "{name}: the cache's copy decodes off by {d}");
    }
}

#[test]
fn save_then_load_is_bit_exact() {
    for name in ["gpt2-tiny", "llama-tiny"] {
        let m = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        let card = ModelCard::new("saved", &m.cfg, Library::Transformers, "A test copy.");
        save_model_dir(&out, &m.cfg, &m.weights, None, &card).unwrap();
        let back = LoadedModel::load(&out, &Device::Cpu).unwrap();
        assert_eq!(back.cfg, m.cfg);
        assert_eq!(back.weights.len(), m.weights.len());
        for (k, w) in &m.weights {
            let a: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = back.weights[k].flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {k} changed"
            );
        }
        // The saved file uses the HF names of the original, tensor for tensor.
        let orig = candle_core::safetensors::load(
            fixtures().join(name).join("model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let saved =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut a: Vec<_> = orig.keys().collect();
        let mut b: Vec<_> = saved.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(
            a, b,
            "{name}: tensor names differ from transformers' own save"
        );
    }
}

#[test]
fn sharded_checkpoints_load() {
    let src = fixtures().join("llama-tiny");
    let m = LoadedModel::load(&src, &Device::Cpu).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    // Split the tensors over two shard files with an index, as save_pretrained does for big models.
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let sub: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&sub, tmp.path().join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let back = LoadedModel::load(tmp.path(), &Device::Cpu).unwrap();
    for (k, w) in &m.weights {
        assert_eq!(max_abs_diff(w, &back.weights[k]), 0.0, "{k}");
    }
}

#[test]
fn batched_decoding_of_sequences_at_different_positions_equals_one_by_one() {
    for name in ["gpt2-tiny", "llama-tiny"] {
        let m = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let model = m.transformer().unwrap();
        let cfg = &m.cfg;
        let ids = load_expected(name)["input_ids"]
            .to_dtype(DType::U32)
            .unwrap();
        // Sequence 0 has a 3-token prefix, sequence 1 a 7-token one; both then add one token.
        let lens = [3usize, 7];
        let mut caches = Vec::new();
        let mut singles = Vec::new();
        for (row, &len) in lens.iter().enumerate() {
            let mut c = chatforge::model::KvCache::new(
                cfg.n_layer,
                1,
                cfg.n_kv_head,
                cfg.head_dim,
                &Device::Cpu,
            )
            .unwrap();
            let prefix = ids.narrow(0, row, 1).unwrap().narrow(1, 0, len).unwrap();
            model.forward(&prefix, 0, Some(&mut c)).unwrap();
            caches.push(c);
            // The reference: the full sequence through the ordinary forward, last position.
            let full = ids
                .narrow(0, row, 1)
                .unwrap()
                .narrow(1, 0, len + 1)
                .unwrap();
            singles.push(model.forward_last(&full, 0, None).unwrap());
        }
        let next: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(row, &len)| {
                ids.get(row)
                    .unwrap()
                    .get(len)
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap()
            })
            .collect();
        let batched = model.forward_step_batch(&next, &mut caches).unwrap();
        let want = Tensor::cat(&singles, 0).unwrap();
        let d = max_abs_diff(&batched, &want);
        assert!(d < 1e-5, "{name}: batched step differs by {d}");
        assert_eq!(caches[0].len(), 4);
        assert_eq!(caches[1].len(), 8);
    }
}
