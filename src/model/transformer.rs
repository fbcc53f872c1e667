//! The decoder-only Transformer shared by both families, read top-down: attention, MLP, block,
//! then the model (norms, linear layers, rotary embeddings and the rest are in `ops`, which also
//! chooses how each runs). B = batch, T = time (new tokens), S = time attended to (cached + new),
//! C = channels, H = query heads, K = key/value heads, D = head dim, V = vocab.

use super::config::{MlpKind, ModelConfig, NormKind, Positions};
use super::kv_cache::{KvCache, LayerKv};
use super::lora::Adapter;
use super::params::check_weights_and_blocks;
use crate::error::Result;
use crate::kernels::cpu::block::{BlockKind, BlockParams, GradSink};
use crate::ops::attention::{self, Heads};
use crate::ops::embedding::TokenEmbedding;
use crate::ops::linear::{BlockWeights, Linear};
use crate::ops::norm::Norm;
use crate::ops::output_head::OutputHead;
use crate::ops::rope::Rope;
use crate::ops::{activation, embedding, loss};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

type Adapters = BTreeMap<String, Adapter>;
/// A model's tensors by internal name, and the weights among them held only in quantized blocks.
type Weights<'a> = (&'a BTreeMap<String, Tensor>, &'a BlockWeights);

pub struct CausalSelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: Heads,
}

impl CausalSelfAttention {
    fn new(w: &Weights, p: &str, cfg: &ModelConfig, ad: &mut Adapters) -> Self {
        CausalSelfAttention {
            qkv: Linear::new(w.0, w.1, &format!("{p}.qkv"), ad),
            proj: Linear::new(w.0, w.1, &format!("{p}.proj"), ad),
            heads: Heads {
                n_head: cfg.n_head,
                n_kv_head: cfg.n_kv_head,
                head_dim: cfg.head_dim,
            },
        }
    }

    /// x: (B, T, C) -> qkv (B, T, (H + 2K) * D) -> attention (B, T, H * D) -> (B, T, C). With a
    /// cache, attends to the cached keys/values too and appends the new ones; `start` is the
    /// position of x's first token.
    fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        start: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let y = attention::self_attention(qkv, self.heads, rope, start, cache)?;
        self.proj.forward(&y)
    }

    /// One new token for each of B independent sequences, each at its own position with its own
    /// cache: the projections run batched, attention per sequence. x: (B, 1, C) -> (B, 1, C).
    fn forward_ragged(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        positions: &[usize],
        caches: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let y = attention::ragged_attention(qkv, self.heads, rope, positions, caches)?;
        self.proj.forward(&y)
    }
}

pub struct Mlp {
    kind: MlpKind,
    fc: Linear,
    proj: Linear,
    intermediate: usize,
}

impl Mlp {
    fn new(w: &Weights, p: &str, cfg: &ModelConfig, ad: &mut Adapters) -> Self {
        Mlp {
            kind: cfg.mlp,
            fc: Linear::new(w.0, w.1, &format!("{p}.fc"), ad),
            proj: Linear::new(w.0, w.1, &format!("{p}.proj"), ad),
            intermediate: cfg.intermediate,
        }
    }

    /// x: (B, T, C) -> (B, T, I) (SwiGLU: (B, T, 2I) of gate and up) -> (B, T, C).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let act = match self.kind {
            // tanh approximation, GPT-2's "gelu_new"
            MlpKind::Gelu => self.fc.forward_gelu(x)?,
            MlpKind::SwiGlu => activation::swiglu(&self.fc.forward(x)?, self.intermediate)?,
        };
        self.proj.forward(&act)
    }
}

pub struct Block {
    ln_1: Norm,
    attn: CausalSelfAttention,
    ln_2: Norm,
    mlp: Mlp,
    /// In training mode, where the block running as one fused node puts its weights'
    /// gradients (see [`Transformer::backward`]).
    sink: Option<GradSink>,
}

impl Block {
    pub(super) fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.attn.qkv,
            &mut self.attn.proj,
            &mut self.mlp.fc,
            &mut self.mlp.proj,
        ]
    }

    /// x: (B, T, C) -> x + attn(ln_1(x)) -> x + mlp(ln_2(x)).
    fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        start: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        if let (Some(sink), None, 0) = (&self.sink, &cache, start) {
            if let Some((p, kind)) = self.fused_params(rope) {
                if let Some(y) = crate::ops::block::fused_block(x, &p, &kind, sink)? {
                    return Ok(y);
                }
            }
        }
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x)?, rope, start, cache)?)?;
        Ok((&x + self.mlp.forward(&self.ln_2.forward(&x)?)?)?)
    }

    pub(super) fn forward_ragged(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        positions: &[usize],
        caches: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let a = self
            .attn
            .forward_ragged(&self.ln_1.forward(x)?, rope, positions, caches)?;
        let x = (x + a)?;
        Ok((&x + self.mlp.forward(&self.ln_2.forward(&x)?)?)?)
    }

    /// The parameters in `kernels::cpu::block`'s order and the block's kind, where the block has
    /// no LoRA adapter (the fused node trains every weight).
    fn fused_params(&self, rope: Option<&Rope>) -> Option<(BlockParams, BlockKind)> {
        let norm = |n: &Norm| (n.weight.clone(), n.bias.clone());
        let lin = |l: &Linear| match &l.lora {
            None => Some((l.w.clone()?, l.b.clone())),
            Some(_) => None,
        };
        let params = [
            norm(&self.ln_1),
            lin(&self.attn.qkv)?,
            lin(&self.attn.proj)?,
            norm(&self.ln_2),
            lin(&self.mlp.fc)?,
            lin(&self.mlp.proj)?,
        ];
        let h = self.attn.heads;
        let kind = BlockKind {
            layer_norm: self.ln_1.kind == NormKind::LayerNorm,
            eps: self.ln_1.eps,
            swiglu: (self.mlp.kind == MlpKind::SwiGlu).then_some(self.mlp.intermediate),
            heads: (h.n_head, h.n_kv_head, h.head_dim),
            rope: rope.map(|r| (r.cos.clone(), r.sin.clone())),
        };
        let same_norms = self.ln_2.kind == self.ln_1.kind && self.ln_2.eps == self.ln_1.eps;
        same_norms.then_some((params, kind))
    }
}

pub struct Transformer {
    pub cfg: ModelConfig,
    pub(super) wte: TokenEmbedding,
    pub(super) wpe: Option<Tensor>,
    pub(super) rope: Option<Rope>,
    pub(super) blocks: Vec<Block>,
    pub(super) ln_f: Norm,
    pub(super) lm_head: OutputHead,
    /// Weight gradients of the blocks that ran as fused nodes (training mode).
    grad_sink: GradSink,
}

impl Transformer {
    /// Builds the model over `weights` (internal names, see `params.rs`). The tensors are shared, not
    /// copied: updating a `Var` behind them updates the model.
    pub fn new(cfg: &ModelConfig, weights: &BTreeMap<String, Tensor>) -> Result<Self> {
        Self::with_adapters(cfg, weights, BTreeMap::new())
    }

    /// The model with LoRA adapters (by internal linear name, see `lora::adapters`) on its linears.
    pub fn with_adapters(
        cfg: &ModelConfig,
        weights: &BTreeMap<String, Tensor>,
        ad: Adapters,
    ) -> Result<Self> {
        Self::build(cfg, (weights, &BlockWeights::new()), ad)
    }

    /// The model for inference over `weights` and, for the weights named there, the quantized
    /// `blocks` as they lie (a GGUF file's; no f32 copy of them is made). Linear layers held in
    /// blocks run every step on them; a token embedding held in blocks is dequantized row by row
    /// as tokens are looked up. Training such a model is an error.
    pub fn with_blocks(
        cfg: &ModelConfig,
        weights: &BTreeMap<String, Tensor>,
        blocks: &BlockWeights,
    ) -> Result<Self> {
        Self::build(cfg, (weights, blocks), BTreeMap::new())
    }

    fn build(cfg: &ModelConfig, w: Weights, mut ad: Adapters) -> Result<Self> {
        let (weights, held) = w;
        cfg.validate()?;
        check_weights_and_blocks(cfg, weights, held, "model weights")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block {
                ln_1: Norm::new(weights, &format!("h.{i}.ln_1"), cfg),
                attn: CausalSelfAttention::new(&w, &format!("h.{i}.attn"), cfg, &mut ad),
                ln_2: Norm::new(weights, &format!("h.{i}.ln_2"), cfg),
                mlp: Mlp::new(&w, &format!("h.{i}.mlp"), cfg, &mut ad),
                sink: None,
            })
            .collect();
        if let Some(name) = ad.keys().next() {
            return Err(crate::error::Error::Mismatch(format!(
                "an adapter for '{name}', which is not a linear layer of this model"
            )));
        }
        let device = weights["ln_f.weight"].device().clone();
        let wte = match held.get("wte.weight") {
            Some(q) => TokenEmbedding::Blocks(q.clone(), device.clone()),
            None => TokenEmbedding::Dense(weights["wte.weight"].clone()),
        };
        let head = if cfg.tie_embeddings {
            "wte.weight"
        } else {
            "lm_head.weight"
        };
        let lm_head = match held.get(head) {
            Some(q) => OutputHead::from_blocks(q.clone()),
            None => OutputHead::new(weights[head].clone()),
        };
        Ok(Transformer {
            cfg: cfg.clone(),
            wpe: weights.get("wpe.weight").cloned(),
            rope: match cfg.positions {
                Positions::Rope => Some(Rope::new(cfg, &device)?),
                Positions::Learned => None,
            },
            blocks,
            ln_f: Norm::new(weights, "ln_f", cfg),
            lm_head,
            grad_sink: GradSink::default(),
            wte,
        })
    }

    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    /// Final hidden states. idx: (B, T) u32 token ids at positions start..start+T -> (B, T, C).
    pub fn forward_hidden(
        &self,
        idx: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let t = idx.dim(1)?;
        if start + t > self.cfg.context {
            return Err(crate::error::Error::Mismatch(format!(
                "sequence of {} tokens is longer than the model's context of {}",
                start + t,
                self.cfg.context
            )));
        }
        let mut x = embedding::embed(&self.wte, self.wpe.as_ref(), idx, start)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            x = block.forward(&x, self.rope.as_ref(), start, layer_cache)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.ln_f.forward(&x)
    }

    /// Next-token logits. idx: (B, T) u32 -> (B, T, V).
    pub fn forward(
        &self,
        idx: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(idx, start, cache)?;
        self.logits(&h)
    }

    /// The training objective: mean next-token cross-entropy of idx (B, T) against targets (B, T)
    /// (`IGNORE_INDEX` left out). The (B * T, V) logits, the largest activation, stay inside one
    /// fused projection-and-loss op (`ops::loss::projected_cross_entropy`), and no reshape of them enters the graph.
    ///
    /// In training mode take its gradients with [`Transformer::backward`].
    pub fn loss(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        // Fused blocks' gradients from a backward not taken through `backward` are stale.
        self.grad_sink.lock().expect("not poisoned").clear();
        let h = self.forward_hidden(idx, 0, None)?;
        let (b, t, c) = h.dims3()?;
        let h = h.reshape((b * t, c))?;
        loss::projected_cross_entropy(&h, self.lm_head.weight()?, targets)
    }

    /// The negative log-likelihood of each target (B, T) (i64, negative = ignored, 0 there),
    /// through the fused output projection: what sequence-level objectives (DPO) sum per row.
    pub fn token_nll(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.grad_sink.lock().expect("not poisoned").clear();
        let h = self.forward_hidden(idx, 0, None)?;
        let (b, t, c) = h.dims3()?;
        let h = h.reshape((b * t, c))?;
        let targets = targets.flatten_all()?.to_dtype(DType::I64)?;
        let nll = loss::projected_nll(&h, self.lm_head.weight()?, &targets)?;
        Ok(nll.reshape((b, t))?)
    }

    /// The gradients of `loss`, a function of this model's outputs: candle's backward, plus the
    /// weight gradients that fused blocks (training mode, see `ops::block`) deliver
    /// outside candle's graph. Use it instead of `loss.backward()` on a model in training mode.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        let fused = std::mem::take(&mut *self.grad_sink.lock().expect("not poisoned"));
        for (w, g) in fused {
            let g = match grads.remove(&w) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(&w, g);
        }
        Ok(grads)
    }

    /// Hidden states (B, T, C) -> f32 logits (B, T, V).
    pub(super) fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.logits(h)
    }

    /// Switches training mode on or off (evaluation, generation): LoRA dropout, and, on the CPU in
    /// f32, GPT-2 blocks as single fused nodes whose weight gradients only
    /// [`Transformer::backward`] collects.
    pub fn set_training(&mut self, on: bool) {
        for b in &mut self.blocks {
            b.sink = on.then(|| self.grad_sink.clone());
            for l in b.linears_mut() {
                if let Some(a) = l.lora.as_mut() {
                    a.training = on;
                }
            }
        }
    }

    pub fn dtype(&self) -> DType {
        match &self.wte {
            TokenEmbedding::Dense(t) => t.dtype(),
            TokenEmbedding::Blocks(..) => DType::F32,
        }
    }
}
