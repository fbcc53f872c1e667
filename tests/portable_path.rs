//! The path a GPU takes, run on the CPU: with the fused CPU kernels switched off every op is
//! the portable formulation in `ops` or candle's own, as under `--device cuda`. Checked against transformers
//! (logits, loss, every gradient), decoding with a cache against the full forward pass, and the
//! f32 and bf16 loss curves of a short training run against the fused path's. (Its own test
//! binary: the switch is process-wide.)

mod common;

use candle_core::Device;
use common::*;

fn portable() {
    chatforge::kernels::cpu::features::set_fused(false);
}

fn check_against_reference(name: &str) {
    portable();
    let (case, loss) = check_training_against_reference(name, &Device::Cpu, "portable path");
    let qkv = case.params.vars["h.0.attn.qkv.weight"].as_tensor();
    assert!(
        loss.backward().unwrap().get(qkv).is_some(),
        "{name}: with the fused kernels off, the gradients come through candle's graph"
    );
}

#[test]
fn gpt2_on_the_portable_path_matches_transformers() {
    check_against_reference("gpt2-tiny");
}

#[test]
fn llama_on_the_portable_path_matches_transformers() {
    check_against_reference("llama-tiny");
}

#[test]
fn portable_decoding_with_a_cache_equals_the_full_forward_pass() {
    portable();
    for name in ["gpt2-tiny", "llama-tiny"] {
        let (model, ids, full, mut cache) = decoding_case(name);
        let d = max_abs_diff(&full, &decode_in_pieces(&model, &ids, &mut cache));
        assert!(d < 1e-5, "{name}: cached decoding differs by {d}");
    }
}

#[test]
fn portable_training_follows_the_fused_loss_curve_in_f32_and_bf16() {
    // Two command-line runs of the same training, one with CHATFORGE_NO_FUSED=1: the same
    // arithmetic in another order, so the same losses to rounding.
    let tmp = tempfile::tempdir().unwrap();
    let data = shakespeare_shards(300_000);
    let curve = |dtype: &str, portable: bool| {
        let out = tmp.path().join(format!("{dtype}-{portable}"));
        let mut cmd = chatforge_command();
        cmd.arg("pretrain").arg("--out").arg(&out);
        for s in [
            format!("data.dir={}", data.display()),
            "model.n_layer=2".into(),
            "model.n_embd=64".into(),
            "model.n_head=4".into(),
            "train.context=64".into(),
            "train.batch_size=8".into(),
            "train.max_steps=12".into(),
            "train.lr=3e-3".into(),
            "train.warmup_steps=5".into(),
            "eval.every=0".into(),
            "eval.sample_every=0".into(),
            "checkpoint.every=0".into(),
            format!("train.dtype={dtype}"),
        ] {
            cmd.arg("--set").arg(s);
        }
        if portable {
            cmd.env("CHATFORGE_NO_FUSED", "1");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        chatforge::train::metrics::read_records(&out.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r["kind"] == "train")
            .map(|r| r["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let fused = curve("f32", false);
    assert_eq!(fused.len(), 12);
    assert!(fused[11] < fused[0] - 0.5, "the run learns: {fused:?}");
    for (dtype, tol) in [("f32", 1e-4), ("bf16", 0.02)] {
        let portable = curve(dtype, true);
        assert_eq!(portable.len(), 12);
        assert_ne!(
            fused, portable,
            "{dtype}: bit-identical, so not another path"
        );
        for (step, (a, b)) in fused.iter().zip(&portable).enumerate() {
            let rel = (a - b).abs() / a;
            assert!(
                rel < tol,
                "{dtype}, step {}: fused {a}, portable {b}",
                step + 1
            );
        }
    }
}
