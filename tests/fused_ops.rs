//! Every fused op against the composed candle ops it replaces: values and gradients, random inputs.

mod common;

use candle_core::{Device, Tensor, Var};
use chatforge::model::ops::{self, reference};
use common::max_abs_diff;

/// Value and gradient of sum(f(x) * w) for a random weighting w.
fn value_and_grad(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor()).unwrap();
    // The same weighting for both implementations, derived from the shape.
    let w = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .reshape(y.shape())
        .unwrap();
    let w = (w * 0.37).unwrap().sin().unwrap();
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(v.as_tensor())
        .expect("a gradient reaches the input")
        .clone();
    (y, g)
}

fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d < tol, "{name}: max difference {d}");
}

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
    let (y1, g1) = value_and_grad(&logits, |x| ops::token_nll(x, &targets));
    let (y2, g2) = value_and_grad(&logits, |x| reference::token_nll(x, &targets));
    assert_close("token_nll value", &y1, &y2, 1e-5);
    assert_close("token_nll grad", &g1, &g2, 1e-5);
    let e = ops::token_nll(&logits, &Tensor::new(&[301i64; 37], &Device::Cpu).unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside the vocabulary"));
}

#[test]
fn causal_softmax_matches_mask_plus_softmax() {
    // (B, K, rep * T, S): 2 query heads share each key head, T new tokens after S - T cached ones.
    for (t, s) in [(7, 7), (3, 10), (1, 5)] {
        let x = Tensor::randn(0f32, 2.0, (2, 3, 2 * t, s), &Device::Cpu).unwrap();
        let (y1, g1) = value_and_grad(&x, |x| ops::causal_softmax(x, t));
        let (y2, g2) = value_and_grad(&x, |x| reference::causal_softmax(x, t));
        assert_close("causal_softmax value", &y1, &y2, 1e-6);
        assert_close("causal_softmax grad", &g1, &g2, 1e-5);
    }
}

#[test]
fn gelu_matches_candle_gelu() {
    let x = Tensor::randn(0f32, 3.0, (64, 129), &Device::Cpu).unwrap();
    let (y1, g1) = value_and_grad(&x, ops::gelu);
    let (y2, g2) = value_and_grad(&x, |x| x.gelu());
    assert_close("gelu value", &y1, &y2, 1e-5);
    assert_close("gelu grad", &g1, &g2, 1e-5);
}

#[test]
fn small_matmul_matches_gemm() {
    for (m, k, n) in [(1, 576, 1536), (3, 100, 77), (16, 64, 1000)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let fast = ops::small_matmul_t(&x, &w)
            .unwrap()
            .expect("the fast path applies");
        let gemm = x.matmul(&w.t().unwrap()).unwrap();
        assert_close("small_matmul_t", &fast, &gemm, 1e-3);
    }
    // Not for many rows, nor when a gradient is tracked.
    let w = Tensor::randn(0f32, 1.0, (8, 8), &Device::Cpu).unwrap();
    assert!(ops::small_matmul_t(
        &Tensor::zeros((64, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &w
    )
    .unwrap()
    .is_none());
    let v = Var::from_tensor(&w).unwrap();
    assert!(ops::small_matmul_t(
        &Tensor::zeros((1, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        v.as_tensor()
    )
    .unwrap()
    .is_none());
}
