//! The policies and references of the preference and RL fixture cases (as
//! tools/make_dpo_fixtures.py and tools/make_grpo_fixtures.py build them), and the check of a
//! LoRA case's gradients.

use super::{fixtures, max_abs, max_abs_diff};
use candle_core::{Device, Tensor};
use chatforge::formats::{peft, LoadedModel};
use chatforge::model::lora;
use chatforge::model::params::Params;
use chatforge::model::Transformer;
use std::collections::HashMap;

/// A fixture case of tiny model `name`: "full" (every weight trainable; the reference is the
/// model with its fixture adapter merged) or "lora" (the adapter trainable; the reference is the
/// base). Returns the base model, the trainable parameters, the policy and the reference.
pub fn tuning_case(name: &str, case: &str) -> (LoadedModel, Params, Transformer, Transformer) {
    let base = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
    let adir = fixtures().join(format!("{name}-lora"));
    let (params, policy, reference) = match case {
        "full" => {
            let params = Params::from_tensors(&base.weights).unwrap();
            let policy = Transformer::new(&base.cfg, &params.tensors()).unwrap();
            let merged = LoadedModel::load(&adir, &Device::Cpu).unwrap();
            (params, policy, merged.transformer().unwrap())
        }
        _ => {
            let (lcfg, _, adapter) = peft::load_adapter(&adir, &base.cfg, &Device::Cpu).unwrap();
            let params = Params::from_tensors(&adapter).unwrap();
            let ad = lora::adapters(&base.cfg, &lcfg, &params.tensors()).unwrap();
            let policy = Transformer::with_adapters(&base.cfg, &base.weights, ad).unwrap();
            (params, policy, base.transformer().unwrap())
        }
    };
    (base, params, policy, reference)
}

/// A fixture case's loss and gradients of `key` against the fixture's (`KEY.loss`,
/// `KEY.grad.NAME`): every weight in HF names (full), or the adapter in PEFT's (LoRA).
#[allow(clippy::too_many_arguments)]
pub fn check_tuning_gradients(
    name: &str,
    key: &str,
    case: &str,
    base: &LoadedModel,
    params: &Params,
    exp: &HashMap<String, Tensor>,
    loss: f64,
    grads: candle_core::backprop::GradStore,
) {
    let mut sub: HashMap<String, Tensor> = exp
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{key}.grad."))
                .map(|g| (format!("grad.{g}"), v.clone()))
        })
        .collect();
    sub.insert("loss".into(), exp[&format!("{key}.loss")].clone());
    if case == "full" {
        let value = Tensor::new(loss as f32, &Device::Cpu).unwrap();
        super::check_loss_and_gradients(name, key, &base.cfg, params, &sub, &value, grads);
        return;
    }
    check_adapter_gradients(&format!("{name} {key}"), base, params, &sub, loss, &grads);
}

/// A LoRA case: the loss (1e-5) and every adapter gradient (1e-4 relative) against the fixture's
/// `sub` ("loss", "grad.NAME" in PEFT's names); the base gets none.
pub fn check_adapter_gradients(
    what: &str,
    base: &LoadedModel,
    params: &Params,
    sub: &HashMap<String, Tensor>,
    loss: f64,
    grads: &candle_core::backprop::GradStore,
) {
    let dl = (loss - sub["loss"].to_vec1::<f32>().unwrap()[0] as f64).abs();
    assert!(
        dl < 1e-5,
        "{what}: loss differs from the reference's by {dl}"
    );
    assert_eq!(
        params.vars.len(),
        sub.len() - 1,
        "one gradient per adapter tensor"
    );
    for (k, v) in &params.vars {
        let g = grads.get(v.as_tensor()).expect("an adapter gradient");
        let r = &sub[&format!("grad.{k}")];
        let rel = max_abs_diff(g, r) / max_abs(r).max(1e-8);
        assert!(
            rel < 1e-4,
            "{what}: gradient of {k} differs (relative {rel})"
        );
    }
    for w in base.weights.values() {
        assert!(grads.get(w).is_none(), "the base is frozen");
    }
}
