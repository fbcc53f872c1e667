//! A whole pre-LayerNorm GPT-2 block as one graph node, for training on the CPU in f32:
//!
//!   x2 = x + proj(attention(qkv(ln_1(x)))),   out = x2 + mlp_proj(gelu(fc(ln_2(x2))))
//!
//! Built from the same kernels as the separate fused ops (norm, linear, attention, GELU). Why one
//! node: candle's backward zero-fills a gradient buffer for every input of every node and adds the
//! node's gradient into it. A block of separate ops had eleven activation-sized gradients (48 MB a
//! block at bench/cpu.sh's reference shape), and that zero-filling, adding and the worker idling
//! while the caller did it were about a seventh of the training step. Here the residual gradients
//! are added in place and nothing is zero-filled.
//!
//! The weights are not inputs of the node (candle's custom ops take at most three), so their
//! gradients do not come back through candle's `GradStore`: the node's backward pushes them into a
//! [`GradSink`], and `Transformer::backward` moves them into the store.

use super::attention::{self, Geometry};
use super::norm::Stats;
use super::{f32_data, linear, with_f32, with_f32s, CResult};
use crate::model::ops::{gelu_backward, gelu_forward};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// (weight, gradient) pairs of weights that are not inputs of their graph node.
pub type GradSink = Arc<Mutex<Vec<(Tensor, Tensor)>>>;

/// A GPT-2 block's parameters in forward order, each (weight, bias): ln_1, attention qkv,
/// attention proj, ln_2, mlp fc, mlp proj.
pub type BlockParams = [Tensor; 12];

/// Activations the backward pass reads.
struct Kept {
    h1: Vec<f32>,
    qkv: Vec<f32>,
    y: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    pre: Vec<f32>,
    act: Vec<f32>,
}

struct Shapes {
    n: usize,
    c: usize,
    /// Width of the qkv projection, of the attention output and of the MLP.
    qkv: usize,
    att: usize,
    mlp: usize,
    geometry: Geometry,
}

fn forward(x: &[f32], p: [&[f32]; 12], s: &Shapes, ln: Stats) -> (Vec<f32>, Kept) {
    let (n, c) = (s.n, s.c);
    let h1 = ln.forward(x, p[0], Some(p[1]));
    let qkv = linear::forward(&h1, p[2], Some(p[3]), None, (n, c, s.qkv));
    let y = attention::forward(&qkv, s.geometry);
    let x2 = linear::forward(&y, p[4], Some(p[5]), Some(x), (n, s.att, c));
    let h2 = ln.forward(&x2, p[6], Some(p[7]));
    let pre = linear::forward(&h2, p[8], Some(p[9]), None, (n, c, s.mlp));
    let act = gelu_forward(&pre);
    let out = linear::forward(&act, p[10], Some(p[11]), Some(&x2), (n, s.mlp, c));
    let kept = Kept {
        h1,
        qkv,
        y,
        x2,
        h2,
        pre,
        act,
    };
    (out, kept)
}

/// dx and the parameters' gradients (in [`BlockParams`] order) for the gradient `g` of the output.
fn backward(
    x: &[f32],
    p: [&[f32]; 12],
    mut k: Kept,
    g: &[f32],
    s: &Shapes,
    ln: Stats,
) -> (Vec<f32>, [Vec<f32>; 12]) {
    let (n, c) = (s.n, s.c);
    let [dact, dw_mp, db_mp] = linear::grads(&k.act, p[10], g, (n, s.mlp, c));
    // The activation is spent: its buffer takes the pre-activation's gradient.
    let mut dpre = std::mem::take(&mut k.act);
    gelu_backward(&k.pre, &dact, &mut dpre);
    drop(dact);
    let [dh2, dw_fc, db_fc] = linear::grads(&k.h2, p[8], &dpre, (n, c, s.mlp));
    let mut dx2 = g.to_vec();
    let (dw_ln2, db_ln2) = ln.backward_into(&k.x2, p[6], &dh2, &mut dx2, true);
    let [dy, dw_p, db_p] = linear::grads(&k.y, p[4], &dx2, (n, s.att, c));
    let dqkv = attention::backward(&k.qkv, &k.y, &dy, s.geometry);
    let [dh1, dw_qkv, db_qkv] = linear::grads(&k.h1, p[2], &dqkv, (n, c, s.qkv));
    let mut dx = dx2;
    let (dw_ln1, db_ln1) = ln.backward_into(x, p[0], &dh1, &mut dx, true);
    let grads = [
        dw_ln1, db_ln1, dw_qkv, db_qkv, dw_p, db_p, dw_ln2, db_ln2, dw_fc, db_fc, dw_mp, db_mp,
    ];
    (dx, grads)
}

struct BlockOp {
    params: BlockParams,
    /// Query heads, key/value heads, head width.
    heads: (usize, usize, usize),
    norm: Stats,
    kept: Mutex<Option<Kept>>,
    sink: GradSink,
}

impl BlockOp {
    fn shapes(&self, l: &Layout) -> CResult<Shapes> {
        let (b, t, c) = l.shape().dims3()?;
        let (h, k, d) = self.heads;
        let dims = |i: usize| self.params[i].dims().to_vec();
        let (qkv, att, mlp) = ((h + 2 * k) * d, h * d, dims(9)[0]);
        let expected = [
            vec![c],
            vec![c],
            vec![qkv, c],
            vec![qkv],
            vec![c, att],
            vec![c],
            vec![c],
            vec![c],
            vec![mlp, c],
            vec![mlp],
            vec![c, mlp],
            vec![c],
        ];
        for (i, e) in expected.iter().enumerate() {
            if dims(i) != *e {
                candle_core::bail!(
                    "gpt-block: parameter {i} has shape {:?}, expected {e:?}",
                    dims(i)
                )
            }
        }
        let geometry = Geometry { b, t, h, k, d };
        Ok(Shapes {
            n: b * t,
            c,
            qkv,
            att,
            mlp,
            geometry,
        })
    }
}

impl CustomOp1 for BlockOp {
    fn name(&self) -> &'static str {
        "gpt-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let shapes = self.shapes(l)?;
        let (out, kept) = with_f32s(&self.params, self.name(), |p| {
            forward(x, p, &shapes, self.norm)
        })?;
        *self.kept.lock().expect("not poisoned") = Some(kept);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let Some(kept) = self.kept.lock().expect("not poisoned").take() else {
            candle_core::bail!("gpt-block: backward without a forward that kept its activations")
        };
        let shapes = self.shapes(x.layout())?;
        let (dx, grads) = with_f32(x, self.name(), |xd| {
            with_f32(g, self.name(), |gd| {
                with_f32s(&self.params, self.name(), |p| {
                    backward(xd, p, kept, gd, &shapes, self.norm)
                })
            })
        })???;
        let mut sink = self.sink.lock().expect("not poisoned");
        for (w, dw) in self.params.iter().zip(grads) {
            sink.push((w.clone(), Tensor::from_vec(dw, w.shape(), w.device())?));
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// The block on x (B, T, C), as one node whose weights' gradients go to `sink` (see the module
/// documentation). `heads`: query heads, key/value heads, head width. Callers check [`applies`].
pub fn gpt_block(
    x: &Tensor,
    params: &BlockParams,
    heads: (usize, usize, usize),
    eps: f64,
    sink: &GradSink,
) -> CResult<Tensor> {
    let op = BlockOp {
        params: params.clone(),
        heads,
        norm: Stats {
            centered: true,
            eps: eps as f32,
        },
        kept: Mutex::new(None),
        sink: sink.clone(),
    };
    x.contiguous()?.apply_op1(op)
}

/// Whether the fused block computes x's block with `params`: f32 on the CPU, x in the graph, and
/// every parameter a trained variable (the node computes every weight's gradient; the separate
/// ops skip a frozen one's).
pub fn applies(x: &Tensor, params: &BlockParams) -> bool {
    super::applies(x) && x.track_op() && params.iter().all(|p| super::applies(p) && p.is_variable())
}
