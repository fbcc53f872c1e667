//! One optimizer step's gradients: forward and backward over its micro-batches, summed, and in a
//! data-parallel run averaged over the ranks; for preference pairs, the step's DPO metrics (a
//! reinforcement-learning step is `rl.rs`).

use super::dpo::{objective, DpoStats};
use super::run::Run;
use super::start::build_model;
use crate::config::Precision;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

impl Run<'_> {
    /// Sums the gradients over the ranks and divides by their number (one all-reduce of all of them
    /// in name order; `BTreeMap` order is the same on every rank).
    pub(super) fn average_gradients(
        &self,
        grads: BTreeMap<String, Tensor>,
        totals: &mut [f64],
    ) -> Result<BTreeMap<String, Tensor>> {
        let world = self.coll.world();
        let mut flat = Vec::with_capacity(grads.len());
        let mut layout = Vec::with_capacity(grads.len());
        for (name, g) in grads {
            flat.push(g.flatten_all()?.to_dtype(DType::F32)?);
            layout.push((name, g.shape().clone(), g.dtype(), g.elem_count()));
        }
        // The loss, the token count and the buffer length (every rank must send as many).
        let n = layout.iter().map(|l| l.3).sum::<usize>() as f64;
        let mut t = totals.to_vec();
        t.push(n);
        self.coll.all_reduce_sum_f64(&mut t);
        if t.pop() != Some(n * world as f64) {
            return Err(Error::Training(
                "the ranks disagree on the gradients' sizes (different models?)".into(),
            ));
        }
        totals.copy_from_slice(&t);
        // One all-reduce of all of them, on their device (NCCL sums on the GPUs).
        let sum = self.coll.all_reduce_sum_tensor(&Tensor::cat(&flat, 0)?)?;
        let w = Tensor::new(world as f32, sum.device())?;
        let avg = sum.broadcast_div(&w)?;
        let mut out = BTreeMap::new();
        let mut off = 0;
        for (name, shape, dtype, len) in layout {
            let g = avg.narrow(0, off, len)?.reshape(shape)?.to_dtype(dtype)?;
            out.insert(name, g);
            off += len;
        }
        Ok(out)
    }

    /// Forward + backward over one optimizer step's micro-batches. Returns the mean loss and the
    /// summed gradients (each micro-batch's loss is divided by the number of micro-batches), and the
    /// tokens; in a data-parallel run all three are over every rank (gradients and loss averaged).
    pub(super) fn step_gradients(&mut self) -> Result<StepGradients> {
        if self.cfg.is_rl() {
            return self.rl_step_gradients();
        }
        let accum = self.accum;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        let mut pairs: Option<DpoStats> = None;
        // The f32 model shares the Vars; a bf16 run builds casts of them for this step.
        let mut bf16 = match self.cfg.train.dtype {
            Precision::Bf16 => Some(build_model(
                &self.state.model,
                &self.params,
                self.lora.as_ref(),
                DType::BF16,
            )?),
            Precision::F32 => None,
        };
        let model = bf16.as_mut().unwrap_or(&mut self.model);
        model.set_training(true);
        for _ in 0..accum {
            let b = self.source.next(&self.device)?;
            tokens += b.tokens;
            self.profile.mark("data")?;
            let loss = match &b.pairs {
                None => {
                    let loss = model.loss(&b.x, &b.y)?;
                    loss_sum += loss.to_scalar::<f32>()? as f64;
                    loss
                }
                Some(rows) => {
                    let (loss, s) = objective(model, &b.x, &b.y, rows, &self.cfg.dpo)?;
                    loss_sum += s.mean_loss();
                    pairs.get_or_insert_with(DpoStats::default).add(&s);
                    loss
                }
            };
            self.profile.mark("forward")?;
            let scaled = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            let store = model.backward(&scaled)?;
            add_gradients(&self.params, store, &mut grads)?;
            self.profile.mark("backward")?;
        }
        model.set_training(false);
        let loss = loss_sum / accum as f64;
        let world = self.coll.world();
        if !self.coll.communicates() {
            return Ok(StepGradients {
                loss,
                grads,
                tokens,
                pairs,
                extra: Default::default(),
            });
        }
        // Rank r's micro-batch k is batch k * world + r of the single-process stream: the average
        // over the ranks is the gradient of the combined batch.
        let mut totals = vec![loss, tokens as f64];
        if let Some(p) = &pairs {
            totals.extend(p.to_vec());
        }
        let grads = self.average_gradients(grads, &mut totals)?;
        self.profile.mark("all-reduce")?;
        Ok(StepGradients {
            loss: totals[0] / world as f64,
            grads,
            tokens: totals[1] as u64,
            pairs: pairs.map(|_| DpoStats::from_slice(&totals[2..])),
            extra: Default::default(),
        })
    }

    /// A backward pass's gradients of the trainable parameters, added into `grads`.
    pub(super) fn add_gradients(
        &self,
        store: candle_core::backprop::GradStore,
        grads: &mut BTreeMap<String, Tensor>,
    ) -> Result<()> {
        add_gradients(&self.params, store, grads)
    }
}

fn add_gradients(
    params: &crate::model::params::Params,
    mut store: candle_core::backprop::GradStore,
    grads: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    for (name, var) in &params.vars {
        if let Some(g) = store.remove(var.as_tensor()) {
            let g = match grads.remove(name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(name.clone(), g);
        }
    }
    Ok(())
}

/// One step's gradients and what they were computed on.
pub(super) struct StepGradients {
    /// The mean loss of the step's micro-batches (over every rank).
    pub loss: f64,
    pub grads: BTreeMap<String, Tensor>,
    pub tokens: u64,
    /// For preference pairs: the step's metrics summed over its pairs (over every rank).
    pub pairs: Option<DpoStats>,
    /// Other metrics of the step under their names (reinforcement learning's).
    pub extra: serde_json::Map<String, serde_json::Value>,
}
