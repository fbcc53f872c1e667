//! The GPU formulations of attention's causal softmax and the loss (the portable formulation in `ops`) against the
//! composed reference, run on the CPU: values and gradients, in f32 and bf16.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use chatforge::ops;
use common::{assert_close, value_and_grad, value_and_grads};

/// Fixed pseudo-random values of about `scale` in magnitude (the same every run).
fn noise(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let u = ((i as f32 * 12.9898).sin() * 43758.547).fract();
            scale * 2.0 * (u - 0.5) * 1.7
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn causal_softmax_matches_the_reference_in_f32_and_bf16() {
    // (B, K, rep * T, S): rep query heads share each key head, T new tokens after S - T cached.
    // (rep 1, t 4) and (rep 2, t 2) have the same shape and different masks (the cache's key).
    for (rep, t, s) in [(1, 4, 9), (2, 2, 9), (2, 7, 7), (3, 1, 5), (1, 16, 16)] {
        let x = noise(&[2, 3, rep * t, s], 2.0);
        let (y0, g0) = value_and_grad(&x, |x| ops::softmax::reference(x, t));
        let (y1, g1) = value_and_grad(&x, |x| ops::softmax::portable(x, t));
        let case = format!("rep {rep}, t {t}, s {s}");
        assert_close(&format!("f32 value, {case}"), &y1, &y0, 1e-6);
        assert_close(&format!("f32 grad, {case}"), &g1, &g0, 1e-6);
        // bf16 against the reference on the same (rounded) inputs: the output's rounding is
        // 2^-8 of a probability at most.
        let xb = x.to_dtype(DType::BF16).unwrap();
        let xr = xb.to_dtype(DType::F32).unwrap();
        let (y0, g0) = value_and_grad(&xr, |x| ops::softmax::reference(x, t));
        let (y2, g2) = value_and_grad(&xb, |x| ops::softmax::portable(x, t));
        assert_close(&format!("bf16 value, {case}"), &y2, &y0, 4e-3);
        assert_close(&format!("bf16 grad, {case}"), &g2, &g0, 1e-2);
    }
    // Back to back on one shape with two different masks (the kept mask must not be reused).
    for (rep, t) in [(1, 4), (2, 2), (1, 4)] {
        let x = noise(&[2, 3, 4, 9], 1.0);
        let y0 = ops::softmax::reference(&x, t).unwrap();
        let y1 = ops::softmax::portable(&x, t).unwrap();
        assert_close(&format!("same shape, rep {rep}, t {t}"), &y1, &y0, 1e-6);
    }
    // Future keys get exactly zero probability and no gradient.
    let x = noise(&[1, 1, 4, 6], 1.0);
    let y = ops::softmax::portable(&x, 4).unwrap();
    let y: Vec<Vec<f32>> = y.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for (r, row) in y.iter().enumerate() {
        assert!(
            row[2 + r + 1..].iter().all(|&p| p == 0.0),
            "row {r}: {row:?}"
        );
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

#[test]
fn token_nll_matches_the_reference_with_ignored_rows_and_extreme_logits() {
    let (n, v) = (37, 301);
    let mut logits: Vec<f32> = noise(&[n, v], 3.0)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let t: Vec<i64> = (0..n)
        .map(|i| match i % 5 {
            0 => -100,
            _ => (i * 41 % v) as i64,
        })
        .collect();
    // Row 1's target has a probability below f32's smallest number (a loss of about 250 nats).
    logits[v + t[1] as usize] = -250.0;
    // Row 2 is almost one-hot on a token that is not the target.
    logits[2 * v + 7] = 90.0;
    let logits = Tensor::from_vec(logits, (n, v), &Device::Cpu).unwrap();
    let targets = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
    let (y0, g0) = value_and_grad(&logits, |x| ops::loss::reference_token_nll(x, &targets));
    let (y1, g1) = value_and_grad(&logits, |x| ops::loss::portable_token_nll(x, &targets));
    // Losses reach 250 here: f32 keeps them to about 3e-5.
    assert_close("value", &y1, &y0, 1e-4);
    assert_close("grad", &g1, &g0, 1e-6);
    let y: Vec<f32> = y1.to_vec1().unwrap();
    assert!(
        (y[1] - 250.0).abs() < 10.0,
        "row 1 loses about 250 nats, got {}",
        y[1]
    );
    assert!(y[0] == 0.0 && y[5] == 0.0, "ignored rows give 0");
    assert_eq!(
        g1.get(0)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_vec0::<f32>()
            .unwrap(),
        0.0,
        "no gradient on an ignored row"
    );
}

#[test]
fn with_grad_attaches_the_given_backward_and_is_the_value_without_one() {
    let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    // value x^2 computed outside the graph, gradient 2x attached.
    let value = x.as_tensor().detach().sqr().unwrap();
    let y = ops::grad::with_grad(x.as_tensor(), value, "square", |x, _, g| g * (x * 2.0)?).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), [1.0, 4.0, 9.0]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
        [2.0, 4.0, 6.0]
    );
    // A strided value comes out as its own contiguous copy.
    let m = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let y = ops::grad::with_grad(
        m.as_tensor(),
        m.as_tensor().detach().t().unwrap(),
        "t",
        |_, _, g| g.t(),
    )
    .unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), [[1.0, 3.0], [2.0, 4.0]]);
    // Nothing tracked: the value itself.
    let plain = Tensor::new(&[5f32], &Device::Cpu).unwrap();
    let y = ops::grad::with_grad(&plain, plain.clone(), "id", |_, _, g| Ok(g.clone())).unwrap();
    assert_eq!(y.id(), plain.id());
}

fn assert_all_close(name: &str, a: &(Tensor, Vec<Tensor>), b: &(Tensor, Vec<Tensor>), tol: f32) {
    assert_close(&format!("{name} value"), &a.0, &b.0, tol);
    for (i, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
        assert_close(&format!("{name} gradient of input {i}"), ga, gb, tol);
    }
}

#[test]
fn norms_match_the_reference_with_and_without_centering_and_bias() {
    use chatforge::ops::norm::reference as norm_ref;
    let x = (noise(&[3, 5, 48], 2.0) + 0.7).unwrap();
    let w = (noise(&[48], 0.5) + 1.0).unwrap();
    let b = noise(&[48], 0.3);
    for centered in [true, false] {
        let with_bias =
            |f: fn(&Tensor, &Tensor, Option<&Tensor>, f64, bool) -> candle_core::Result<Tensor>| {
                value_and_grads(&[&x, &w, &b], move |t| {
                    f(t[0], t[1], Some(t[2]), 1e-5, centered)
                })
            };
        let name = if centered { "LayerNorm" } else { "RMSNorm" };
        assert_all_close(
            name,
            &with_bias(ops::norm::portable),
            &with_bias(norm_ref),
            1e-5,
        );
        let no_bias =
            |f: fn(&Tensor, &Tensor, Option<&Tensor>, f64, bool) -> candle_core::Result<Tensor>| {
                value_and_grads(&[&x, &w], move |t| f(t[0], t[1], None, 1e-6, centered))
            };
        assert_all_close(
            &format!("{name} without bias"),
            &no_bias(ops::norm::portable),
            &no_bias(norm_ref),
            1e-5,
        );
    }
}

#[test]
fn linear_matches_the_reference_with_and_without_bias() {
    use chatforge::ops::linear::reference as linear_ref;
    let (x, w, b) = (
        noise(&[2, 7, 24], 1.0),
        noise(&[40, 24], 0.3),
        noise(&[40], 0.5),
    );
    let run = |f: fn(&Tensor, &Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>| {
        value_and_grads(&[&x, &w, &b], move |t| f(t[0], t[1], Some(t[2])))
    };
    assert_all_close(
        "linear",
        &run(ops::linear::portable),
        &run(linear_ref),
        1e-5,
    );
    let run = |f: fn(&Tensor, &Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>| {
        value_and_grads(&[&x, &w], move |t| f(t[0], t[1], None))
    };
    assert_all_close(
        "linear without bias",
        &run(ops::linear::portable),
        &run(linear_ref),
        1e-5,
    );
}
