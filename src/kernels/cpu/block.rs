//! A whole pre-norm transformer block as one graph node, for training on the CPU in f32:
//!
//!   x2 = x + proj(attention(rope(qkv(norm_1(x))))),   out = x2 + mlp_proj(act(fc(norm_2(x2))))
//!
//! GPT-2's (LayerNorm, biases, GELU, no RoPE) and the Llama family's (RMSNorm, RoPE, SwiGLU,
//! biases where the model has them, grouped-query attention). Built from the same kernels as the
//! separate fused ops (norm, linear, RoPE on rows, attention, GELU, SwiGLU). Why one node:
//! candle's backward zero-fills a gradient buffer for every input of every node and adds the
//! node's gradient into it. A GPT-2 block of separate ops had eleven activation-sized gradients
//! (48 MB a block at bench/cpu.sh's reference shape), and that zero-filling, adding and the worker
//! idling while the caller did it were about a seventh of the training step. Here the residual
//! gradients are added in place and nothing is zero-filled.
//!
//! The weights are not inputs of the node (candle's custom ops take at most three), so their
//! gradients do not come back through candle's `GradStore`: the node's backward pushes them into a
//! [`GradSink`], and `Transformer::backward` moves them into the store.

use super::activation::{gelu_backward, gelu_forward, swiglu_backward, swiglu_forward};
use super::attention::{self, Geometry};
use super::linear;
use super::norm::Stats;
use super::rope::Tables;
use super::storage::{f32_data, with_f32, with_f32_list, CResult};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// (weight, gradient) pairs of weights that are not inputs of their graph node.
pub type GradSink = Arc<Mutex<Vec<(Tensor, Tensor)>>>;

/// A block's parameters in forward order, each a weight and its bias where the model has one:
/// norm_1, attention qkv, attention proj, norm_2, mlp fc, mlp proj.
pub type BlockParams = [(Tensor, Option<Tensor>); 6];

/// What kind of block: its norms, its MLP's activation, its heads and its RoPE tables.
#[derive(Clone)]
pub struct BlockKind {
    /// LayerNorm (else RMSNorm), and the norms' epsilon.
    pub layer_norm: bool,
    pub eps: f64,
    /// SwiGLU with this intermediate width (the fc rows hold gate then up), else GELU.
    pub swiglu: Option<usize>,
    /// Query heads, key/value heads, head width.
    pub heads: (usize, usize, usize),
    /// RoPE's (context, D) cos and sin tables, for models with rotary positions.
    pub rope: Option<(Tensor, Tensor)>,
}

/// One parameter's data: weight and optional bias.
type P<'a> = (&'a [f32], Option<&'a [f32]>);

/// One parameter's gradients: weight and bias (thrown away where there is no bias).
type Grads = (Vec<f32>, Vec<f32>);

/// Activations the backward pass reads.
struct Kept {
    h1: Vec<f32>,
    /// The projection after RoPE, as attention read it.
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
    /// Width of the qkv projection, of the attention output, of the fc output and of the MLP's
    /// activation (fc's width, or half of it for SwiGLU).
    qkv: usize,
    att: usize,
    fc: usize,
    mlp: usize,
    geometry: Geometry,
}

/// The data the kernels need besides the parameters.
struct Ctx<'a> {
    s: &'a Shapes,
    norm: Stats,
    swiglu: Option<usize>,
    rope: Option<Tables<'a>>,
}

impl Ctx<'_> {
    /// RoPE on the query and key heads of the projection's rows (or its inverse, backward).
    fn rope(&self, qkv: Vec<f32>, inverse: bool) -> Vec<f32> {
        let g = self.s.geometry;
        match &self.rope {
            Some(r) => r.rotate(&qkv, g.t, self.s.qkv, g.h + g.k, 0, inverse),
            None => qkv,
        }
    }

    fn forward(&self, x: &[f32], p: [P; 6]) -> (Vec<f32>, Kept) {
        let (s, ln) = (self.s, self.norm);
        let (n, c) = (s.n, s.c);
        let h1 = ln.forward(x, p[0].0, p[0].1);
        let qkv = linear::forward(&h1, p[1].0, p[1].1, None, (n, c, s.qkv));
        let qkv = self.rope(qkv, false);
        let y = attention::forward(&qkv, s.geometry);
        let x2 = linear::forward(&y, p[2].0, p[2].1, Some(x), (n, s.att, c));
        let h2 = ln.forward(&x2, p[3].0, p[3].1);
        let pre = linear::forward(&h2, p[4].0, p[4].1, None, (n, c, s.fc));
        let act = match self.swiglu {
            Some(i) => swiglu_forward(&pre, i),
            None => gelu_forward(&pre),
        };
        let out = linear::forward(&act, p[5].0, p[5].1, Some(&x2), (n, s.mlp, c));
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

    /// dx and the parameters' gradients (weight, bias, in [`BlockParams`] order) for the
    /// gradient `g` of the output.
    fn backward(&self, x: &[f32], p: [P; 6], mut k: Kept, g: &[f32]) -> (Vec<f32>, [Grads; 6]) {
        let (s, ln) = (self.s, self.norm);
        let (n, c) = (s.n, s.c);
        let [dact, dw_mp, db_mp] = linear::grads(&k.act, p[5].0, g, (n, s.mlp, c));
        let dpre = match self.swiglu {
            Some(i) => swiglu_backward(&k.pre, &dact, i),
            None => {
                // The activation is spent: its buffer takes the pre-activation's gradient.
                let mut dpre = std::mem::take(&mut k.act);
                gelu_backward(&k.pre, &dact, &mut dpre);
                dpre
            }
        };
        drop(dact);
        let [dh2, dw_fc, db_fc] = linear::grads(&k.h2, p[4].0, &dpre, (n, c, s.fc));
        drop(dpre);
        let mut dx2 = g.to_vec();
        let ln2 = ln.backward_into(&k.x2, p[3].0, &dh2, &mut dx2, true);
        let [dy, dw_p, db_p] = linear::grads(&k.y, p[2].0, &dx2, (n, s.att, c));
        let dqkv = attention::backward(&k.qkv, &k.y, &dy, s.geometry);
        let dqkv = self.rope(dqkv, true);
        let [dh1, dw_qkv, db_qkv] = linear::grads(&k.h1, p[1].0, &dqkv, (n, c, s.qkv));
        let mut dx = dx2;
        let ln1 = ln.backward_into(x, p[0].0, &dh1, &mut dx, true);
        let grads = [
            ln1,
            (dw_qkv, db_qkv),
            (dw_p, db_p),
            ln2,
            (dw_fc, db_fc),
            (dw_mp, db_mp),
        ];
        (dx, grads)
    }
}

struct BlockOp {
    params: BlockParams,
    kind: BlockKind,
    kept: Mutex<Option<Kept>>,
    sink: GradSink,
}

impl BlockOp {
    fn shapes(&self, l: &Layout) -> CResult<Shapes> {
        let (b, t, c) = l.shape().dims3()?;
        let (h, k, d) = self.kind.heads;
        let (qkv, att) = ((h + 2 * k) * d, h * d);
        let fc = self.params[4].0.dim(0)?;
        let mlp = match self.kind.swiglu {
            Some(i) => i,
            None => fc,
        };
        let expected = [
            vec![c],
            vec![qkv, c],
            vec![c, att],
            vec![c],
            vec![fc, c],
            vec![c, mlp],
        ];
        for (i, ((w, b), e)) in self.params.iter().zip(&expected).enumerate() {
            let bias_ok = b.as_ref().is_none_or(|b| b.dims() == [e[0]]);
            if w.dims() != e.as_slice() || !bias_ok || (self.kind.swiglu.is_some() && fc != 2 * mlp)
            {
                candle_core::bail!(
                    "block: parameter {i} has shape {:?} (bias {:?}), expected {e:?}",
                    w.dims(),
                    b.as_ref().map(|b| b.dims().to_vec())
                )
            }
        }
        if let Some((cos, _)) = &self.kind.rope {
            let (ctx, dr) = cos.dims2()?;
            if dr != d || t > ctx {
                candle_core::bail!(
                    "block: RoPE tables {:?} for {t} positions of heads of {d}",
                    cos.dims()
                )
            }
        }
        Ok(Shapes {
            n: b * t,
            c,
            qkv,
            att,
            fc,
            mlp,
            geometry: Geometry { b, t, h, k, d },
        })
    }

    /// The parameters' tensors, then the RoPE tables, as one list (see `run`).
    fn tensors(&self) -> Vec<Tensor> {
        let mut ts = Vec::new();
        for (w, b) in &self.params {
            ts.push(w.clone());
            ts.extend(b.clone());
        }
        if let Some((cos, sin)) = &self.kind.rope {
            ts.extend([cos.clone(), sin.clone()]);
        }
        ts
    }

    /// Runs `f` on the parameters' data and the kernels' context.
    fn run<R>(&self, shapes: &Shapes, f: impl FnOnce(&Ctx, [P; 6]) -> R) -> CResult<R> {
        let d = self.kind.heads.2;
        with_f32_list(&self.tensors(), "block", |data| {
            let mut next = data.iter().copied();
            let p = self.params.each_ref().map(|(_, b)| {
                let w = next.next().expect("a weight");
                (w, b.as_ref().map(|_| next.next().expect("a bias")))
            });
            let rope = self.kind.rope.as_ref().map(|_| Tables {
                cos: next.next().expect("cos"),
                sin: next.next().expect("sin"),
                d,
            });
            let ctx = Ctx {
                s: shapes,
                norm: Stats {
                    centered: self.kind.layer_norm,
                    eps: self.kind.eps as f32,
                },
                swiglu: self.kind.swiglu,
                rope,
            };
            f(&ctx, p)
        })
    }
}

impl CustomOp1 for BlockOp {
    fn name(&self) -> &'static str {
        "block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let shapes = self.shapes(l)?;
        let (out, kept) = self.run(&shapes, |ctx, p| ctx.forward(x, p))?;
        *self.kept.lock().expect("not poisoned") = Some(kept);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let Some(kept) = self.kept.lock().expect("not poisoned").take() else {
            candle_core::bail!("block: backward without a forward that kept its activations")
        };
        let shapes = self.shapes(x.layout())?;
        let (dx, grads) = with_f32(x, self.name(), |xd| {
            with_f32(g, self.name(), |gd| {
                self.run(&shapes, |ctx, p| ctx.backward(xd, p, kept, gd))
            })
        })???;
        let mut sink = self.sink.lock().expect("not poisoned");
        for ((w, b), (dw, db)) in self.params.iter().zip(grads) {
            sink.push((w.clone(), Tensor::from_vec(dw, w.shape(), w.device())?));
            if let Some(b) = b {
                sink.push((b.clone(), Tensor::from_vec(db, b.shape(), b.device())?));
            }
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// The block on x (B, T, C) from position 0, as one node whose weights' gradients go to `sink`
/// (see the module documentation). Callers check [`applies`].
pub fn block(
    x: &Tensor,
    params: &BlockParams,
    kind: &BlockKind,
    sink: &GradSink,
) -> CResult<Tensor> {
    let op = BlockOp {
        params: params.clone(),
        kind: kind.clone(),
        kept: Mutex::new(None),
        sink: sink.clone(),
    };
    x.contiguous()?.apply_op1(op)
}

/// Whether the fused block computes x's block with `params`: f32 on the CPU, x in the graph, and
/// every parameter a trained variable (the node computes every weight's gradient; the separate
/// ops skip a frozen one's).
pub fn applies(x: &Tensor, params: &BlockParams) -> bool {
    let trained = |p: &Tensor| super::features::applies(p) && p.is_variable();
    super::features::applies(x)
        && x.track_op()
        && params
            .iter()
            .all(|(w, b)| trained(w) && b.as_ref().is_none_or(trained))
}
