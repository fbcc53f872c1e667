//! Every fused op against the composed candle ops it replaces: values and gradients, random inputs.

mod common;

use candle_core::{Device, Tensor, Var};
use chatforge::ops;
use common::{assert_close, max_abs_diff, value_and_grad, value_and_grads};

#[test]
fn token_nll_matches_log_softmax_gather() {
    let logits = (Tensor::randn(0f32, 3.0, (37, 301), &Device::Cpu).unwrap())
        .contiguous()
        .unwrap();
    let t: Vec<i64> = (0..37)
        .map(|i| {
            if i % 5 == 0 {
                -100
            } else {
                (i * 41 % 301) as i64
            }
        })
        .collect();
    let targets = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
    let (y1, g1) = value_and_grad(&logits, |x| ops::loss::token_nll(x, &targets));
    let (y2, g2) = value_and_grad(&logits, |x| ops::loss::reference_token_nll(x, &targets));
    assert_close("token_nll value", &y1, &y2, 1e-5);
    assert_close("token_nll grad", &g1, &g2, 1e-5);
    let e = ops::loss::token_nll(&logits, &Tensor::new(&[301i64; 37], &Device::Cpu).unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside the vocabulary"));
}

#[test]
fn causal_softmax_matches_mask_plus_softmax() {
    // (B, K, rep * T, S): 2 query heads share each key head, T new tokens after S - T cached ones.
    for (t, s) in [(7, 7), (3, 10), (1, 5)] {
        let x = Tensor::randn(0f32, 2.0, (2, 3, 2 * t, s), &Device::Cpu).unwrap();
        let (y1, g1) = value_and_grad(&x, |x| ops::softmax::causal_softmax(x, t));
        let (y2, g2) = value_and_grad(&x, |x| ops::softmax::reference(x, t));
        assert_close("causal_softmax value", &y1, &y2, 1e-6);
        assert_close("causal_softmax grad", &g1, &g2, 1e-5);
    }
}

#[test]
fn gelu_matches_candle_gelu() {
    let x = Tensor::randn(0f32, 3.0, (64, 129), &Device::Cpu).unwrap();
    let (y1, g1) = value_and_grad(&x, ops::activation::gelu);
    let (y2, g2) = value_and_grad(&x, |x| x.gelu());
    assert_close("gelu value", &y1, &y2, 1e-5);
    assert_close("gelu grad", &g1, &g2, 1e-5);
}

#[test]
fn small_matmul_matches_gemm() {
    for (m, k, n) in [(1, 576, 1536), (3, 100, 77), (16, 64, 1000)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let fast = ops::linear::small_matmul_t(&x, &w)
            .unwrap()
            .expect("the fast path applies");
        let gemm = x.matmul(&w.t().unwrap()).unwrap();
        assert_close("small_matmul_t", &fast, &gemm, 1e-3);
        // f16 weights (decoding's output projection) against the same weights widened to f32.
        let wh = w.to_dtype(candle_core::DType::F16).unwrap();
        let half = ops::linear::small_matmul_t(&x, &wh)
            .unwrap()
            .expect("the fast path takes f16 weights");
        let widened = wh.to_dtype(candle_core::DType::F32).unwrap();
        let want = x.matmul(&widened.t().unwrap()).unwrap();
        assert_close("small_matmul_t f16", &half, &want, 1e-3);
    }
    // Not for many rows, nor when a gradient is tracked.
    let w = Tensor::randn(0f32, 1.0, (8, 8), &Device::Cpu).unwrap();
    assert!(ops::linear::small_matmul_t(
        &Tensor::zeros((64, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &w
    )
    .unwrap()
    .is_none());
    let v = Var::from_tensor(&w).unwrap();
    assert!(ops::linear::small_matmul_t(
        &Tensor::zeros((1, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        v.as_tensor()
    )
    .unwrap()
    .is_none());
}

/// Relative to the largest reference value, so that tolerances mean the same at every scale.
fn assert_rel(name: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-6);
    let d = max_abs_diff(a, b) / scale;
    assert!(d < tol, "{name}: max difference {d} relative to {scale}");
}

fn randn(shape: &[usize], seed_scale: f64) -> Tensor {
    Tensor::randn(0f32, seed_scale as f32, shape, &Device::Cpu).unwrap()
}

#[test]
fn fused_linear_matches_matmul_plus_bias() {
    use chatforge::ops::linear;
    // The last two cross the GEMM's blocking (384 deep, 120 rows, 32 columns) with ragged edges.
    for (n, i, o) in [
        (37, 24, 50),
        (1, 7, 3),
        (128, 96, 288),
        (300, 400, 70),
        (515, 97, 777),
    ] {
        let (x, w, b) = (randn(&[n, i], 1.0), randn(&[o, i], 0.5), randn(&[o], 1.0));
        let (y1, g1) = value_and_grads(&[&x, &w, &b], |t| linear::linear(t[0], t[1], Some(t[2])));
        let (y2, g2) =
            value_and_grads(&[&x, &w, &b], |t| linear::reference(t[0], t[1], Some(t[2])));
        assert_rel("linear value", &y1, &y2, 1e-5);
        for (k, name) in ["dx", "dw", "db"].iter().enumerate() {
            assert_rel(name, &g1[k], &g2[k], 1e-5);
        }
        let (y1, g1) = value_and_grads(&[&x, &w], |t| linear::linear(t[0], t[1], None));
        let (y2, g2) = value_and_grads(&[&x, &w], |t| linear::reference(t[0], t[1], None));
        assert_rel("linear (no bias) value", &y1, &y2, 1e-5);
        assert_rel("linear (no bias) dx", &g1[0], &g2[0], 1e-5);
        assert_rel("linear (no bias) dw", &g1[1], &g2[1], 1e-5);
    }
    // A frozen weight (a constant, as under LoRA) gets no gradient, the input still does.
    let (x, w) = (randn(&[5, 4], 1.0), randn(&[3, 4], 1.0));
    let xv = Var::from_tensor(&x).unwrap();
    let y = linear::linear(xv.as_tensor(), &w, None).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&w).is_none());
    assert!(grads.get(xv.as_tensor()).is_some());
    // Mismatched shapes are an error, not a panic.
    assert!(linear::linear(&x, &randn(&[3, 5], 1.0), None).is_err());
}

#[test]
fn fused_norms_match_composed_layer_norm_and_rms_norm() {
    use chatforge::ops::norm;
    for (rows, c) in [(2 * 9, 48), (1, 5), (300, 384)] {
        let x = (randn(&[rows, c], 2.0) + 0.7).unwrap();
        let (w, b) = ((randn(&[c], 0.3) + 1.0).unwrap(), randn(&[c], 0.3));
        let (y1, g1) = value_and_grads(&[&x, &w, &b], |t| {
            norm::norm(t[0], t[1], Some(t[2]), 1e-5, true)
        });
        let (y2, g2) = value_and_grads(&[&x, &w, &b], |t| {
            norm::reference(t[0], t[1], Some(t[2]), 1e-5, true)
        });
        assert_rel("layer norm value", &y1, &y2, 1e-5);
        for (k, name) in ["layer norm dx", "dw", "db"].iter().enumerate() {
            assert_rel(name, &g1[k], &g2[k], 2e-5);
        }
        let (y1, g1) = value_and_grads(&[&x, &w], |t| norm::norm(t[0], t[1], None, 1e-6, false));
        let (y2, g2) = value_and_grads(&[&x, &w], |t| {
            norm::reference(t[0], t[1], None, 1e-6, false)
        });
        assert_rel("rms norm value", &y1, &y2, 1e-5);
        assert_rel("rms norm dx", &g1[0], &g2[0], 2e-5);
        assert_rel("rms norm dw", &g1[1], &g2[1], 2e-5);
    }
    // Frozen weights (constants, as LoRA's base) get no gradient; the input does.
    let xv = Var::from_tensor(&randn(&[4, 8], 1.0)).unwrap();
    let (w, b) = (randn(&[8], 1.0), randn(&[8], 1.0));
    let y = norm::norm(xv.as_tensor(), &w, Some(&b), 1e-5, true).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    assert!(grads.get(xv.as_tensor()).is_some());
    // (B, T, C) inputs normalise over the last dimension too.
    let x = randn(&[2, 3, 8], 1.0);
    let w = randn(&[8], 1.0);
    let a = norm::norm(&x, &w, None, 1e-5, true).unwrap();
    let r = norm::reference(&x, &w, None, 1e-5, true).unwrap();
    assert_rel("layer norm without bias, 3-d", &a, &r, 1e-5);
    assert!(norm::norm(&x, &randn(&[7], 1.0), None, 1e-5, true).is_err());
}

#[test]
fn fused_attention_matches_composed_attention() {
    use chatforge::ops::attention;
    // (B, T, H, K, D): multi-head, grouped-query, more than one block of query rows (64), one token.
    for (b, t, h, k, d) in [
        (2, 9, 3, 3, 8),
        (1, 150, 4, 2, 16),
        (3, 70, 2, 1, 4),
        (2, 1, 2, 2, 8),
    ] {
        let qkv = randn(&[b, t, (h + 2 * k) * d], 1.0);
        let (y1, g1) = value_and_grads(&[&qkv], |x| attention::causal_attention(x[0], h, k, d));
        let (y2, g2) = value_and_grads(&[&qkv], |x| attention::reference(x[0], h, k, d));
        assert_eq!(y1.dims(), &[b, t, h * d]);
        assert_rel("attention value", &y1, &y2, 1e-5);
        assert_rel("attention dqkv", &g1[0], &g2[0], 1e-5);
    }
    // A row width that does not hold the heads is an error.
    assert!(attention::causal_attention(&randn(&[1, 4, 10], 1.0), 2, 1, 4).is_err());
}

#[test]
fn cached_attention_over_strided_cache_buffers_matches_causal_attention() {
    use chatforge::ops::attention;
    // (B, S, T, H, K, D): the last T of S positions are new. D = 64 and 128 take the AVX-512
    // kernel, D = 48 the portable one; grouped-query and multi-head; one new token and several.
    for (b, s, t, h, k, d) in [
        (1, 70, 1, 9, 3, 64),
        (2, 33, 5, 4, 4, 128),
        (2, 20, 1, 6, 2, 48),
        (1, 9, 9, 2, 1, 64),
    ] {
        let qkv = randn(&[b, s, (h + 2 * k) * d], 1.0);
        let want = attention::reference(&qkv, h, k, d)
            .unwrap()
            .narrow(1, s - t, t)
            .unwrap();
        // Keys and values as a cache holds them: (B, K, S, D) views into buffers with room for
        // 2S + 3 positions, so that rows of different heads are not adjacent.
        let heads = qkv.reshape((b, s, h + 2 * k, d)).unwrap();
        let cached = |from: usize| {
            let rows = heads.narrow(2, from, k).unwrap().transpose(1, 2).unwrap();
            let buf =
                Tensor::zeros((b, k, 2 * s + 3, d), candle_core::DType::F32, &Device::Cpu).unwrap();
            buf.slice_set(&rows.contiguous().unwrap(), 2, 0).unwrap();
            buf.narrow(2, 0, s).unwrap()
        };
        let (keys, values) = (cached(h), cached(h + k));
        assert_eq!(keys.is_contiguous(), b * k == 1);
        let new = qkv.narrow(1, s - t, t).unwrap();
        let y =
            chatforge::kernels::cpu::attention::cached_attention(&new, &keys, &values, h).unwrap();
        assert_eq!(y.dims(), &[b, t, h * d]);
        assert_rel("cached attention", &y, &want, 1e-5);
    }
    // More new tokens than cached positions, and heads that do not fit the rows, are errors.
    let qkv = randn(&[1, 4, 4 * 8], 1.0);
    let kv = randn(&[1, 1, 3, 8], 1.0);
    assert!(chatforge::kernels::cpu::attention::cached_attention(&qkv, &kv, &kv, 2).is_err());
    let kv = randn(&[1, 1, 6, 8], 1.0);
    assert!(chatforge::kernels::cpu::attention::cached_attention(&qkv, &kv, &kv, 3).is_err());
}

#[test]
fn fused_adamw_matches_the_composed_update() {
    use chatforge::train::optim::{AdamW, AdamWConfig};
    use std::collections::BTreeMap;
    // The fused pass runs on f32 CPU parameters; f64 ones take the composed candle ops.
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let init = randn(&[70_000], 1.0); // more than one parallel chunk
    let bias = randn(&[33], 1.0);
    let mut runs = Vec::new();
    for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
        let mut params = BTreeMap::new();
        // A decayed matrix weight and an undecayed bias.
        params.insert(
            "h.0.mlp.fc.weight".to_string(),
            Var::from_tensor(&init.to_dtype(dtype).unwrap()).unwrap(),
        );
        params.insert(
            "h.0.mlp.fc.bias".to_string(),
            Var::from_tensor(&bias.to_dtype(dtype).unwrap()).unwrap(),
        );
        let mut opt = AdamW::new(cfg, &params).unwrap();
        for step in 0..3 {
            let grads: BTreeMap<String, Tensor> = params
                .iter()
                .map(|(k, v)| {
                    let g = (v.as_tensor().sin().unwrap() * (step as f64 + 0.5)).unwrap();
                    (k.clone(), g)
                })
                .collect();
            // Clipping's gradient scale on the second step.
            let scale = if step == 1 { 0.25 } else { 1.0 };
            opt.step(&params, &grads, 1e-2, scale).unwrap();
        }
        runs.push(params);
    }
    for name in ["h.0.mlp.fc.weight", "h.0.mlp.fc.bias"] {
        let a = runs[0][name].as_tensor().clone();
        let b = runs[1][name]
            .as_tensor()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert_rel(name, &a, &b, 1e-6);
        // And they moved: the test compares updates, not two copies of the start.
        let start = if name.ends_with("bias") { &bias } else { &init };
        assert!(max_abs_diff(&a, start) > 1e-3, "{name} did not move");
    }
}

#[test]
fn fused_linear_keeps_leading_dimensions() {
    use chatforge::ops::linear;
    // (B, T, I) in, (B, T, O) out, as the transformer calls it (no reshape around it).
    let (x, w, b) = (
        randn(&[2, 5, 24], 1.0),
        randn(&[7, 24], 1.0),
        randn(&[7], 1.0),
    );
    let (y1, g1) = value_and_grads(&[&x, &w, &b], |t| linear::linear(t[0], t[1], Some(t[2])));
    let (y2, g2) = value_and_grads(&[&x, &w, &b], |t| linear::reference(t[0], t[1], Some(t[2])));
    assert_eq!(y1.dims(), &[2, 5, 7]);
    assert_eq!(g1[0].dims(), &[2, 5, 24]);
    assert_rel("3-d linear value", &y1, &y2, 1e-5);
    for (k, name) in ["3-d dx", "3-d dw", "3-d db"].iter().enumerate() {
        assert_rel(name, &g1[k], &g2[k], 1e-5);
    }
}

#[test]
fn fused_linear_gelu_matches_linear_then_gelu() {
    use chatforge::ops::linear;
    for shape in [vec![37, 24], vec![2, 9, 48]] {
        let i = *shape.last().unwrap();
        let (x, w, b) = (randn(&shape, 1.0), randn(&[96, i], 0.4), randn(&[96], 0.5));
        let (y1, g1) = value_and_grads(&[&x, &w, &b], |t| linear::linear_gelu(t[0], t[1], t[2]));
        let (y2, g2) = value_and_grads(&[&x, &w, &b], |t| {
            ops::activation::gelu(&linear::reference(t[0], t[1], Some(t[2]))?)
        });
        assert_rel("linear-gelu value", &y1, &y2, 1e-5);
        for (k, name) in ["linear-gelu dx", "dw", "db"].iter().enumerate() {
            assert_rel(name, &g1[k], &g2[k], 1e-5);
        }
    }
}

/// The GEMM against an f64 triple loop on every operand layout (row-major and transposed A and B,
/// read in place or packed), accumulating or not, on sizes that leave ragged register tiles,
/// 16 x 16 transpose blocks and KC blocks.
#[test]
fn gemm_matches_a_naive_product_on_every_layout() {
    use chatforge::kernels::cpu::gemm::{matmul, View};
    for (m, n, k) in [
        (1, 1, 1),
        (13, 33, 17),
        // Fewer rows than columns and depth: x . w^T runs as (w . x^T)^T (ragged 16 x 16 blocks).
        (37, 70, 400),
        (130, 45, 800),
        (24, 64, 32),
        // More columns than one packed block of B (NC = 512), ragged.
        (130, 1100, 40),
        // More rows than the swap takes (256), deeper than they are: x . w^T packs w^T.
        (300, 310, 350),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
        for (ta, tb, accumulate) in (0..8).map(|f| (f & 1 != 0, f & 2 != 0, f & 4 != 0)) {
            // Transposed operands are stored as their transposes, row-major.
            let av = if ta {
                View::rows(&a, m).t()
            } else {
                View::rows(&a, k)
            };
            let bv = if tb {
                View::rows(&b, k).t()
            } else {
                View::rows(&b, n)
            };
            let mut c = c0.clone();
            matmul(m, n, k, &mut c, n, accumulate, av, bv, 0.5);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|p| {
                            let x = if ta { a[p * m + i] } else { a[i * k + p] };
                            let y = if tb { b[j * k + p] } else { b[p * n + j] };
                            x as f64 * y as f64
                        })
                        .sum();
                    let want = 0.5 * dot
                        + if accumulate {
                            c0[i * n + j] as f64
                        } else {
                            0.0
                        };
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{n}x{k} ta={ta} tb={tb} acc={accumulate} at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The fused output projection + loss against the projection then `token_nll`: values and the
/// gradients of the hidden states and of the output weight, with ignored targets among them.
#[test]
fn fused_lm_nll_matches_projection_then_token_nll() {
    use chatforge::ops::{linear, loss};
    for (n, c, v) in [(37, 24, 50), (1, 8, 5), (300, 96, 1000)] {
        let (h, w) = (randn(&[n, c], 1.0), randn(&[v, c], 0.5));
        let t: Vec<i64> = (0..n as i64)
            .map(|i| {
                if i % 7 == 3 {
                    -100
                } else {
                    (i * 31) % v as i64
                }
            })
            .collect();
        let targets = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let (y1, g1) = value_and_grads(&[&h, &w], |x| loss::projected_nll(x[0], x[1], &targets));
        let (y2, g2) = value_and_grads(&[&h, &w], |x| {
            ops::loss::token_nll(&linear::reference(x[0], x[1], None)?, &targets)
        });
        assert_rel("lm-nll value", &y1, &y2, 1e-5);
        assert_rel("lm-nll dh", &g1[0], &g2[0], 1e-5);
        assert_rel("lm-nll dw", &g1[1], &g2[1], 1e-5);
        if n > 3 {
            let ignored = y1.to_vec1::<f32>().unwrap()[3];
            assert_eq!(ignored, 0.0, "an ignored target contributes nothing");
        }
    }
    // A frozen output weight gets no gradient; a target outside the vocabulary is an error.
    let (h, w) = (randn(&[4, 8], 1.0), randn(&[6, 8], 1.0));
    let hv = Var::from_tensor(&h).unwrap();
    let ok = Tensor::new(&[0i64, 5, -100, 2], &Device::Cpu).unwrap();
    let grads = loss::projected_nll(hv.as_tensor(), &w, &ok)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&w).is_none() && grads.get(hv.as_tensor()).is_some());
    let bad = Tensor::new(&[0i64, 6, 1, 2], &Device::Cpu).unwrap();
    assert!(loss::projected_nll(&h, &w, &bad).is_err());
}

#[test]
fn fused_blocks_match_the_separate_ops() {
    // Models whose blocks run as single fused nodes in training mode: loss and every gradient
    // against the same model in evaluation mode (each block a chain of separate ops), at a shape
    // where attention spans several 64-row blocks and a sequence is ragged against them. GPT-2;
    // a Llama with grouped-query attention (RoPE, RMSNorm, SwiGLU, no biases); and one with
    // biases on its attention projections (as Qwen2 has).
    use chatforge::model::params::{init_weights, Params};
    use chatforge::model::{ModelConfig, Transformer};
    let llama = ModelConfig::llama(2, 4, 2, 64, 96, 97, 160, false);
    let biased = ModelConfig {
        attn_bias: true,
        ..llama.clone()
    };
    for (name, cfg) in [
        ("gpt2", ModelConfig::gpt2(2, 4, 64, 97, 160)),
        ("llama", llama),
        ("llama with attention biases", biased),
    ] {
        let params = Params::from_tensors(&init_weights(&cfg, 7, &Device::Cpu).unwrap()).unwrap();
        let mut model = Transformer::new(&cfg, &params.tensors()).unwrap();
        let ids: Vec<u32> = (0..2 * 150).map(|i| (i * 31 % 97) as u32).collect();
        let idx = Tensor::from_vec(ids, (2, 150), &Device::Cpu).unwrap();
        let targets = idx
            .roll(-1, 1)
            .unwrap()
            .to_dtype(candle_core::DType::I64)
            .unwrap();
        let separate = model.loss(&idx, &targets).unwrap();
        let g_separate = model.backward(&separate).unwrap();
        model.set_training(true);
        let fused = model.loss(&idx, &targets).unwrap();
        // The blocks' weights get no gradient through candle's graph: they ran fused.
        let qkv = params.vars["h.0.attn.qkv.weight"].as_tensor();
        assert!(
            fused.backward().unwrap().get(qkv).is_none(),
            "{name}: not fused"
        );
        let fused = model.loss(&idx, &targets).unwrap();
        let g_fused = model.backward(&fused).unwrap();
        let dl = max_abs_diff(&separate, &fused);
        assert!(dl < 1e-5, "{name}: loss differs by {dl}");
        for (p, v) in &params.vars {
            let (a, b) = (
                g_separate.get(v.as_tensor()).unwrap(),
                g_fused
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient for {p}")),
            );
            let rel = max_abs_diff(a, b) / common::max_abs(a).max(1e-8);
            assert!(
                rel < 1e-4,
                "{name}: gradient of {p} differs (relative {rel})"
            );
        }
    }
}

#[test]
fn swiglu_matches_silu_times_up() {
    // Rows of gate then up, gates from -100 to 100 (exp clamped at the ends), 7 rows (ragged
    // against the 16-row tasks) of I = 37.
    let i = 37;
    let h: Vec<f32> = (0..7 * 2 * i)
        .map(|j| ((j * 53 % 201) as f32 - 100.0) * if j % 3 == 0 { 1.0 } else { 0.05 })
        .collect();
    let h = Tensor::from_vec(h, (7, 2 * i), &Device::Cpu).unwrap();
    let fused = ops::activation::swiglu(&h, i).unwrap();
    let gate = h.narrow(1, 0, i).unwrap();
    let up = h.narrow(1, i, i).unwrap();
    let composed = (candle_nn::ops::silu(&gate).unwrap() * up).unwrap();
    let d = max_abs_diff(&fused, &composed) / common::max_abs(&composed);
    assert!(
        d < 1e-6,
        "swiglu differs by {d} (relative to the largest value)"
    );
    assert!(
        ops::activation::swiglu(&h, i + 1).is_err(),
        "a row that is not gate and up"
    );
    // Gradients on moderate values (where silu's curvature matters).
    let h = (Tensor::randn(0f32, 2.0, (2, 9, 2 * i), &Device::Cpu).unwrap())
        .contiguous()
        .unwrap();
    let (y1, g1) = value_and_grad(&h, |x| ops::activation::swiglu(x, i));
    let (y2, g2) = value_and_grad(&h, |x| {
        let gate = x.narrow(2, 0, i)?;
        candle_nn::ops::silu(&gate)? * x.narrow(2, i, i)?
    });
    assert_close("swiglu value", &y1, &y2, 1e-5);
    assert_close("swiglu grad", &g1, &g2, 1e-3);
}

#[test]
fn block_weights_hold_a_files_q4_1_and_q8_0_exactly_and_multiply_like_f32() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use chatforge::kernels::cpu::blockq::{BlockWeight, Format};
    // Rows of 3 blocks and of 300.
    for (n, k) in [(70, 96), (3, 9600)] {
        let w = Tensor::randn(0f32, 0.5, (n, k), &Device::Cpu).unwrap();
        for (dtype, format) in [(GgmlDType::Q4_1, Format::Q4), (GgmlDType::Q8_0, Format::Q8)] {
            // The weight as a GGUF file holds it: quantized by candle (GGML's format), then
            // dequantized to f32, as the loader does.
            let file = QTensor::quantize(&w, dtype)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let q = BlockWeight::quantize_exact(&file, format)
                .unwrap()
                .unwrap_or_else(|| panic!("{dtype:?}: the file's blocks come back exactly"));
            let back = Tensor::from_vec(q.dequantize(), (n, k), &Device::Cpu).unwrap();
            let d = max_abs_diff(&back, &file);
            assert!(
                d < 1e-6,
                "{dtype:?}: the file's values come back to within {d}"
            );
            // Decoding rows through the blocks against x . w^T in f32 and against candle's
            // GGML kernels (both multiply 8-bit activations, as llama.cpp does).
            let ggml = candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&w, dtype).unwrap(),
            )
            .unwrap();
            for rows in [1, 5] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, k), &Device::Cpu).unwrap();
                let got = q.matmul_t(&x).unwrap();
                let want = x.broadcast_matmul(&file.t().unwrap()).unwrap();
                assert_eq!(got.dims(), &[1, rows, n]);
                // Errors against |x| |w|, the bound on any of the dot products (a few outputs of
                // 9600 terms may all be near zero).
                let norm = |t: &Tensor| {
                    let sq = t
                        .sqr()
                        .unwrap()
                        .sum_keepdim(candle_core::D::Minus1)
                        .unwrap();
                    sq.max_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
                };
                let scale = norm(&x) * norm(&file);
                let rel = max_abs_diff(&got, &want) / scale;
                // 8-bit activations, as GGML's kernel multiplies them, cost ~1e-4 of that bound;
                // candle's GGML kernel keeps Q8_1's sum term as f16(sum) * f16(d) where
                // llama.cpp rounds d * sum once. A wrong code order or scale is off by the
                // whole product.
                let (f32_tol, ggml_tol) = (5e-3, 2e-3);
                assert!(
                    rel < f32_tol,
                    "{dtype:?}, {rows} rows of {k}: differs from f32 by {rel}"
                );
                let reference = candle_core::Module::forward(&ggml, &x).unwrap();
                let rel = max_abs_diff(&got, &reference) / scale;
                assert!(
                    rel < ggml_tol,
                    "{dtype:?}, {rows} rows of {k}: differs from GGML's kernel by {rel}"
                );
            }
        }
    }
    let w = Tensor::randn(0f32, 0.5, (70, 96), &Device::Cpu).unwrap();
    // Q4_0's blocks need not reach both ends of their codes: not exact in either format (such
    // files decode through candle's Q8_0); nor is a plain f32 weight.
    let q4_0 = QTensor::quantize(&w, GgmlDType::Q4_0)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    assert!(BlockWeight::quantize_exact(&q4_0, Format::Q4)
        .unwrap()
        .is_none());
    assert!(BlockWeight::quantize_exact(&w, Format::Q8)
        .unwrap()
        .is_none());
    // Rows that do not split into blocks of 32 stay as they are; a wrong input width is an error.
    let odd = Tensor::zeros((4, 40), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(BlockWeight::quantize(&odd, Format::Q8).unwrap().is_none());
    let q = BlockWeight::quantize(&w, Format::Q4).unwrap().unwrap();
    let x = Tensor::zeros((1, 95), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(q.matmul_t(&x).is_err());
    // A GGUF tensor's bytes: the right length for its shape, and finite scales.
    let bytes = vec![0u8; 2 * 3 * Format::Q8.block_bytes()];
    assert!(BlockWeight::from_ggml(Format::Q8, &bytes, 2, 96).is_ok());
    assert!(BlockWeight::from_ggml(Format::Q8, &bytes[1..], 2, 96).is_err());
    assert!(BlockWeight::from_ggml(Format::Q4, &bytes, 2, 96).is_err());
    let mut nan = bytes.clone();
    nan[Format::Q8.block_bytes()..][..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let err = BlockWeight::from_ggml(Format::Q8, &nan, 2, 96)
        .err()
        .unwrap();
    assert!(err.to_string().contains("block 1 holds NaN"), "{err}");
    // Embedding rows: dequantized, and an id past the last row is an error.
    let rows = q.rows_f32(&[69, 0]).unwrap();
    assert_eq!(&rows[..96], &q.dequantize()[69 * 96..70 * 96]);
    assert!(q.rows_f32(&[70]).is_err());
}

#[test]
fn joined_weights_are_held_in_blocks_only_where_their_parts_share_a_format() {
    use chatforge::kernels::cpu::blockq::{BlockWeight, Format};
    let cfg = chatforge::formats::hf::load_config(&common::fixtures().join("llama-tiny")).unwrap();
    // Every tensor as 8-bit blocks, except the key projections as 4-bit ones (a file that mixes
    // formats): the query/key/value weight of every layer stays f32, the rest are blocks.
    let blocks = chatforge::formats::hf::blocks_from_hf(&cfg, |name, shape| {
        if shape.len() != 2 || shape[1] % 32 != 0 {
            return Ok(None);
        }
        let format = if name.contains("k_proj") {
            Format::Q4
        } else {
            Format::Q8
        };
        let bytes = vec![0u8; shape[0] * shape[1] / 32 * format.block_bytes()];
        Ok(Some(
            BlockWeight::from_ggml(format, &bytes, shape[0], shape[1]).unwrap(),
        ))
    })
    .unwrap();
    for l in 0..cfg.n_layer {
        assert!(!blocks.contains_key(&format!("h.{l}.attn.qkv.weight")));
        assert!(blocks.contains_key(&format!("h.{l}.attn.proj.weight")));
        let fc = &blocks[&format!("h.{l}.mlp.fc.weight")];
        assert_eq!(
            fc.dims(),
            (2 * cfg.intermediate, cfg.n_embd),
            "gate and up joined"
        );
    }
}
