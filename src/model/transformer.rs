//! The decoder-only Transformer shared by both families, read top-down: norm, rotary embedding,
//! attention, MLP, block, then the model. B = batch, T = time (new tokens), S = time attended to
//! (cached + new), C = channels, H = query heads, K = key/value heads, D = head dim, V = vocab.
//!
//! candle's fused norm/softmax/rotary/sdpa kernels have no backward pass and would silently cut
//! gradients (see DESIGN.md): only composed ops and our own ops with backward passes are used (`ops`,
//! `fused` on the CPU; `device_ops` elsewhere, where candle's softmax kernel runs on a detached input
//! and `device_ops::with_grad` attaches the backward).

use super::blockq::{BlockWeight, Format};
use super::config::{MlpKind, ModelConfig, NormKind, Positions};
use super::fused::block::{BlockKind, BlockParams, GradSink};
use super::kv_cache::{KvCache, LayerKv};
use super::params::check_weights;
use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use std::collections::BTreeMap;

/// y = x @ w^T (+ b). x: (B, T, in), w: (out, in) -> (B, T, out).
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, w, b, None)
}

/// x: (B, T, in) -> (B, T, out) through `w` [out, in], an optional bias and an optional LoRA adapter.
fn linear_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    lora: Option<&super::lora::Adapter>,
) -> Result<Tensor> {
    let (bsz, t, cin) = x.dims3()?;
    let x2 = x.reshape((bsz * t, cin))?;
    if let Some(y) = super::ops::small_matmul_t(&x2, w)? {
        // Decoding a few tokens: a parallel matrix-vector product.
        let y = match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match lora {
            Some(a) => a.apply(&x2, y)?,
            None => y,
        };
        return Ok(y.reshape((bsz, t, ()))?);
    }
    match lora {
        // (B, T, in) -> (B, T, out) directly: a reshape would cost a zero-filled gradient copy.
        None => Ok(super::fused::linear::linear(x, w, b)?),
        Some(a) => {
            let y = super::fused::linear::linear(&x2, w, b)?;
            Ok(a.apply(&x2, y)?.reshape((bsz, t, ()))?)
        }
    }
}

/// A linear layer's weight `[out, in]`, bias, and LoRA adapter; for inference, optionally a
/// quantized copy of the weight (see [`Transformer::quantize`]).
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
    lora: Option<super::lora::Adapter>,
    q: Option<Quantized>,
}

impl Linear {
    fn new(w: &BTreeMap<String, Tensor>, name: &str, adapters: &mut Adapters) -> Self {
        Linear {
            w: w[&format!("{name}.weight")].clone(),
            b: w.get(&format!("{name}.bias")).cloned(),
            lora: adapters.remove(name),
            q: None,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.q {
            Some(q) if use_quantized(x) => q.linear(x, self.b.as_ref()),
            _ => linear_with(x, &self.w, self.b.as_ref(), self.lora.as_ref()),
        }
    }

    fn adapters_mut(&mut self) -> Option<&mut super::lora::Adapter> {
        self.lora.as_mut()
    }
}

type Adapters = BTreeMap<String, super::lora::Adapter>;

/// A quantized copy of a linear layer's weight, for decoding.
enum Quantized {
    /// candle's quantized matmul: x is quantized to 8 bits per block and dotted with the weight's
    /// blocks, never expanding the weight to f32.
    Ggml(QMatMul),
    /// chatforge's blocks multiplied with f32 activations (`model::blockq`).
    Blocks(BlockWeight),
}

impl Quantized {
    /// x (B, T, in) through the weight, plus the bias.
    fn linear(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let dtype = x.dtype();
        let y = match self {
            Quantized::Ggml(q) => q.forward(&x.to_dtype(DType::F32)?.contiguous()?)?,
            Quantized::Blocks(q) => q.matmul_t(x)?,
        };
        let y = match b {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
            None => y,
        };
        Ok(y.to_dtype(dtype)?)
    }
}

/// Whether x (B, T, in) goes through the quantized weight: when decoding (a few rows, where reading
/// the weight is the cost) and no gradient is wanted. A prompt (many rows) is compute-bound and
/// runs faster through the f32 GEMM.
fn use_quantized(x: &Tensor) -> bool {
    !x.track_op() && decoding_rows(x)
}

/// Whether x (..., in) has at most `ops::DECODE_ROWS` rows.
fn decoding_rows(x: &Tensor) -> bool {
    x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1) <= super::ops::DECODE_ROWS
}

/// A quantized copy of `w` [out, in], or None where the format does not fit (rows not a multiple
/// of the block size).
fn quantize_weight(w: &Tensor, dtype: GgmlDType) -> Result<Option<Quantized>> {
    if !w.device().is_cpu() || w.dim(1)? % dtype.block_size() != 0 {
        return Ok(None);
    }
    if dtype == GgmlDType::Q4_1 {
        return Ok(BlockWeight::quantize(w, Format::Q4)?.map(Quantized::Blocks));
    }
    let q = QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?;
    Ok(Some(Quantized::Ggml(QMatMul::from_qtensor(q)?)))
}

pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn new(w: &BTreeMap<String, Tensor>, name: &str, cfg: &ModelConfig) -> Self {
        Norm {
            kind: cfg.norm,
            weight: w[&format!("{name}.weight")].clone(),
            bias: w.get(&format!("{name}.bias")).cloned(),
            eps: cfg.norm_eps,
        }
    }

    /// x: (B, T, C) -> (B, T, C), normalised over C.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Statistics in f32 whatever the compute dtype (bf16 mixed precision).
        let dtype = x.dtype();
        let x = &x.to_dtype(DType::F32)?;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let bias = self.bias.as_ref().map(f32).transpose()?;
        let centered = self.kind == NormKind::LayerNorm;
        let y =
            super::fused::norm::norm(x, &f32(&self.weight)?, bias.as_ref(), self.eps, centered)?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// Rotary position embedding in the Hugging Face layout ("rotate half": the first D/2 channels pair
/// with the last D/2).
pub struct Rope {
    cos: Tensor, // (context, D)
    sin: Tensor, // (context, D)
}

impl Rope {
    fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(cfg.context * d);
        let mut sin = Vec::with_capacity(cfg.context * d);
        for p in 0..cfg.context {
            for half in 0..2 {
                let _ = half;
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (cfg.context, d), device)?,
            sin: Tensor::from_vec(sin, (cfg.context, d), device)?,
        })
    }

    /// x: (B, heads, T, D) at positions start..start+T -> same shape.
    fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, t, d) = x.dims4()?;
        let cos = self.cos.narrow(0, start, t)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, start, t)?.to_dtype(x.dtype())?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }
}

pub struct CausalSelfAttention {
    qkv: Linear,
    proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl CausalSelfAttention {
    fn new(w: &BTreeMap<String, Tensor>, p: &str, cfg: &ModelConfig, ad: &mut Adapters) -> Self {
        CausalSelfAttention {
            qkv: Linear::new(w, &format!("{p}.qkv"), ad),
            proj: Linear::new(w, &format!("{p}.proj"), ad),
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
        }
    }

    /// x: (B, T, C) -> (B, T, C). With a cache, attends to the cached keys/values too and appends the
    /// new ones; `start` is the position of x's first token.
    fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        start: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, k, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        // From the start of a sequence (training, scoring, a prompt into an empty cache): the fused
        // attention straight out of the projection, RoPE applied to its rows first.
        let fresh = cache.as_ref().is_none_or(|c| c.len() == 0);
        let rope_fused = rope.is_none() || super::fused::applies(&qkv);
        if start == 0 && fresh && rope_fused {
            let qkv = self.roped(qkv, rope, 0)?;
            let y = super::fused::attention::causal_attention(&qkv, h, k, d)?;
            if let Some(c) = cache {
                let (kk, v) = self.kv_heads(&qkv)?;
                c.set(kk, v)?;
            }
            return self.proj.forward(&y);
        }
        if super::fused::applies(&qkv) && !qkv.track_op() {
            let y = self.attend_cached(qkv, rope, start, cache)?;
            return self.proj.forward(&y);
        }
        let qkv = qkv.reshape((b, t, h + 2 * k, d))?;
        let (q, kk, v) = self.split_heads(&qkv, rope, start)?;
        let (kk, v) = match cache {
            Some(c) => append_kv(c, &kk, &v)?,
            None => (kk, v),
        };
        let y = self.attend(&q, &kk, &v)?;
        self.proj.forward(&y)
    }

    /// Inference past the start of a sequence (decoding): RoPE on the rows of qkv (B, T, W) at
    /// positions start.., the new keys and values appended to the cache, the queries attending
    /// over it in one op (`fused::attention::cached_attention`) -> (B, T, H * D).
    fn attend_cached(
        &self,
        qkv: Tensor,
        rope: Option<&Rope>,
        start: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let qkv = self.roped(qkv, rope, start)?;
        let (kk, v) = self.kv_heads(&qkv)?;
        let (kk, v) = match cache {
            Some(c) => {
                c.append(&kk, &v)?;
                c.views()?
            }
            None => (kk, v),
        };
        Ok(super::fused::attention::cached_attention(
            &qkv,
            &kk,
            &v,
            self.n_head,
        )?)
    }

    /// qkv (B, T, W) with RoPE (if the model has it) on its query and key heads at positions
    /// start.. (`fused::rope`).
    fn roped(&self, qkv: Tensor, rope: Option<&Rope>, start: usize) -> Result<Tensor> {
        let heads = self.n_head + self.n_kv_head;
        Ok(match rope {
            Some(r) => super::fused::rope::rope_rows(&qkv, &r.cos, &r.sin, heads, start)?,
            None => qkv,
        })
    }

    /// The key and value heads of projection rows (B, T, W) -> (B, K, T, D) each, as the cache
    /// holds them.
    fn kv_heads(&self, qkv: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = qkv.dims3()?;
        let (h, k, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let heads = qkv.reshape((b, t, h + 2 * k, d))?;
        let kk = heads.narrow(2, h, k)?.transpose(1, 2)?.contiguous()?;
        let v = heads.narrow(2, h + k, k)?.transpose(1, 2)?.contiguous()?;
        Ok((kk, v))
    }

    /// Query, key and value heads from the fused projection, RoPE applied at positions start...
    /// qkv: (B, T, H + 2K, D) -> q: (B, H, T, D), k, v: (B, K, T, D).
    fn split_heads(
        &self,
        qkv: &Tensor,
        rope: Option<&Rope>,
        start: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (h, k) = (self.n_head, self.n_kv_head);
        let q = qkv.narrow(2, 0, h)?.transpose(1, 2)?.contiguous()?;
        let kk = qkv.narrow(2, h, k)?.transpose(1, 2)?.contiguous()?;
        let v = qkv.narrow(2, h + k, k)?.transpose(1, 2)?.contiguous()?;
        Ok(match rope {
            Some(r) => (r.apply(&q, start)?, r.apply(&kk, start)?, v),
            None => (q, kk, v),
        })
    }

    /// Causal attention of T new queries over S keys (the last T of them are the new tokens).
    /// q: (B, H, T, D), k, v: (B, K, S, D) -> (B, T, H * D).
    fn attend(&self, q: &Tensor, kk: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let k = self.n_kv_head;
        // Grouped-query attention without copying keys: the H/K query heads that share a key head
        // are stacked along time. q: (B, K, H/K * T, D), kk^T: (B, K, D, S) -> (B, K, H/K * T, S).
        let rep = h / k;
        let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, k, rep * t, d))?;
        let att = q.matmul(&kk.t()?)?;
        let att = super::ops::causal_softmax(&att, t)?;
        // (B, K, H/K * T, S) @ (B, K, S, D) -> (B, H, T, D) -> (B, T, H * D)
        let y = att.matmul(v)?.reshape((b, h, t, d))?;
        Ok(y.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
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
        let b = x.dim(0)?;
        let (h, k, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        if super::fused::applies(&qkv) && !qkv.track_op() {
            let rows = caches
                .iter_mut()
                .enumerate()
                .map(|(i, c)| self.attend_cached(qkv.narrow(0, i, 1)?, rope, positions[i], Some(c)))
                .collect::<Result<Vec<_>>>()?;
            return self.proj.forward(&Tensor::cat(&rows, 0)?);
        }
        let qkv = qkv.reshape((b, 1, h + 2 * k, d))?;
        let mut rows = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (q, kk, v) = self.split_heads(&qkv.narrow(0, i, 1)?, rope, positions[i])?;
            let (kk, v) = append_kv(cache, &kk, &v)?;
            rows.push(self.attend(&q, &kk, &v)?);
        }
        self.proj.forward(&Tensor::cat(&rows, 0)?)
    }
}

/// Appends new keys/values (B, K, T, D) to a layer's cache and returns the whole of it, contiguous
/// (candle's composed attention, off the fused path).
fn append_kv(c: &mut LayerKv, kk: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    c.append(kk, v)?;
    let (kk, v) = c.views()?;
    Ok((kk.contiguous()?, v.contiguous()?))
}

pub struct Mlp {
    kind: MlpKind,
    fc: Linear,
    proj: Linear,
    intermediate: usize,
}

impl Mlp {
    fn new(w: &BTreeMap<String, Tensor>, p: &str, cfg: &ModelConfig, ad: &mut Adapters) -> Self {
        Mlp {
            kind: cfg.mlp,
            fc: Linear::new(w, &format!("{p}.fc"), ad),
            proj: Linear::new(w, &format!("{p}.proj"), ad),
            intermediate: cfg.intermediate,
        }
    }

    /// x: (B, T, C) -> (B, T, C) through (B, T, I).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fc = &self.fc;
        let decoding = decoding_rows(x) && !fc.w.track_op();
        if let (MlpKind::Gelu, None, None, Some(b), false) =
            (self.kind, &fc.lora, &fc.q, &fc.b, decoding)
        {
            // Up-projection and GELU as one op (training, scoring, prompts).
            let act = super::fused::linear::linear_gelu(x, &fc.w, b)?;
            return self.proj.forward(&act);
        }
        let hdn = self.fc.forward(x)?;
        let act = match self.kind {
            MlpKind::Gelu => super::ops::gelu(&hdn)?, // tanh approximation, GPT-2's "gelu_new"
            MlpKind::SwiGlu => super::ops::swiglu(&hdn, self.intermediate)?,
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
    fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.attn.qkv,
            &mut self.attn.proj,
            &mut self.mlp.fc,
            &mut self.mlp.proj,
        ]
    }

    fn forward_ragged(
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

    /// The parameters in `fused::block`'s order and the block's kind, where the block has no
    /// LoRA adapter (the fused node trains every weight).
    fn fused_params(&self, rope: Option<&Rope>) -> Option<(BlockParams, BlockKind)> {
        let norm = |n: &Norm| (n.weight.clone(), n.bias.clone());
        let lin = |l: &Linear| match &l.lora {
            None => Some((l.w.clone(), l.b.clone())),
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
        let a = &self.attn;
        let kind = BlockKind {
            layer_norm: self.ln_1.kind == NormKind::LayerNorm,
            eps: self.ln_1.eps,
            swiglu: (self.mlp.kind == MlpKind::SwiGlu).then_some(self.mlp.intermediate),
            heads: (a.n_head, a.n_kv_head, a.head_dim),
            rope: rope.map(|r| (r.cos.clone(), r.sin.clone())),
        };
        let same_norms = self.ln_2.kind == self.ln_1.kind && self.ln_2.eps == self.ln_1.eps;
        same_norms.then_some((params, kind))
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        start: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        if let (Some(sink), None, 0) = (&self.sink, &cache, start) {
            if let Some((p, kind)) = self.fused_params(rope) {
                if super::fused::block::applies(x, &p) {
                    return Ok(super::fused::block::block(x, &p, &kind, sink)?);
                }
            }
        }
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x)?, rope, start, cache)?)?;
        Ok((&x + self.mlp.forward(&self.ln_2.forward(&x)?)?)?)
    }
}

pub struct Transformer {
    pub cfg: ModelConfig,
    wte: Tensor,
    wpe: Option<Tensor>,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    ln_f: Norm,
    lm_head: Tensor,
    /// An f16 copy of the output projection for decoding steps, made by [`Transformer::quantize`].
    lm_head_half: Option<Tensor>,
    /// The output projection in 8-bit blocks for decoding steps, where those hold it exactly (a
    /// file's Q8_0 tensor), made by [`Transformer::quantize`] instead of the f16 copy.
    lm_head_q8: Option<BlockWeight>,
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
        mut ad: Adapters,
    ) -> Result<Self> {
        cfg.validate()?;
        check_weights(cfg, weights, "model weights")?;
        let device = weights["wte.weight"].device().clone();
        let blocks = (0..cfg.n_layer)
            .map(|i| Block {
                ln_1: Norm::new(weights, &format!("h.{i}.ln_1"), cfg),
                attn: CausalSelfAttention::new(weights, &format!("h.{i}.attn"), cfg, &mut ad),
                ln_2: Norm::new(weights, &format!("h.{i}.ln_2"), cfg),
                mlp: Mlp::new(weights, &format!("h.{i}.mlp"), cfg, &mut ad),
                sink: None,
            })
            .collect();
        if let Some(name) = ad.keys().next() {
            return Err(crate::error::Error::Mismatch(format!(
                "an adapter for '{name}', which is not a linear layer of this model"
            )));
        }
        let wte = weights["wte.weight"].clone();
        let lm_head = if cfg.tie_embeddings {
            wte.clone()
        } else {
            weights["lm_head.weight"].clone()
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
            lm_head_half: None,
            lm_head_q8: None,
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
        let (b, t) = idx.dims2()?;
        if start + t > self.cfg.context {
            return Err(crate::error::Error::Mismatch(format!(
                "sequence of {} tokens is longer than the model's context of {}",
                start + t,
                self.cfg.context
            )));
        }
        let mut x = self
            .wte
            .index_select(&idx.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        if let Some(wpe) = &self.wpe {
            x = x.broadcast_add(&wpe.narrow(0, start, t)?)?;
        }
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
    /// fused projection-and-loss op (`fused::lm_loss`), and no reshape of them enters the graph.
    ///
    /// In training mode take its gradients with [`Transformer::backward`].
    pub fn loss(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        // Fused blocks' gradients from a backward not taken through `backward` are stale.
        self.grad_sink.lock().expect("not poisoned").clear();
        let h = self.forward_hidden(idx, 0, None)?;
        let (b, t, c) = h.dims3()?;
        let h = h.reshape((b * t, c))?;
        super::loss::projected_cross_entropy(&h, &self.lm_head, targets)
    }

    /// The gradients of `loss`, a function of this model's outputs: candle's backward, plus the
    /// weight gradients that fused GPT-2 blocks (training mode, see `fused::block`) deliver
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
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        if let (Some(q), true) = (&self.lm_head_q8, decoding_rows(h) && !h.track_op()) {
            return q.matmul_t(h);
        }
        if let Some(w) = &self.lm_head_half {
            let (b, t, c) = h.dims3()?;
            if let Some(y) = super::ops::small_matmul_t(&h.reshape((b * t, c))?, w)? {
                return Ok(y.reshape((b, t, ()))?);
            }
        }
        Ok(linear(h, &self.lm_head, None)?.to_dtype(DType::F32)?)
    }

    /// Inference with quantized weights: every linear layer of the blocks gets a `dtype` copy of its
    /// weight that decoding steps use (see `use_quantized`); the f32 weights stay for prompts and
    /// training. `Q4_1` runs on chatforge's own 4-bit blocks with f32 activations
    /// (`model::blockq`; candle's Q4_1 kernel is scalar), the other formats on candle's quantized
    /// matmul. The output projection is never quantized further than the file did: the next token
    /// is an argmax over its logits, and 8-bit activations there flip close calls (SmolLM2's first
    /// answer token among them). Where 8-bit blocks hold it exactly (a file's Q8_0 tensor) decoding
    /// steps use those with f32 activations; otherwise an f16 copy, half the bytes of f32. CPU only;
    /// layers that carry a LoRA adapter or whose width is not a multiple of the block size stay
    /// f32.
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<()> {
        if self.lm_head.device().is_cpu() && self.lm_head.dtype() == DType::F32 {
            self.lm_head_q8 = BlockWeight::quantize_exact(&self.lm_head, Format::Q8)?;
            if self.lm_head_q8.is_none() {
                self.lm_head_half = Some(self.lm_head.to_dtype(DType::F16)?.contiguous()?);
            }
        }
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                if l.lora.is_none() {
                    l.q = quantize_weight(&l.w, dtype)?;
                }
            }
        }
        Ok(())
    }

    /// Logits for the last position only, (B, V): what generation needs, without the (B, T, V) tensor.
    pub fn forward_last(
        &self,
        idx: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(idx, start, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }

    /// Runs a prompt (1, T) through the model into a fresh KV cache: the cache and the next-token
    /// logits (1, V), where every decoding loop starts.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(KvCache, Tensor)> {
        let cfg = &self.cfg;
        let mut cache = KvCache::new(cfg.n_layer, 1, cfg.n_kv_head, cfg.head_dim, self.device())?;
        let x = Tensor::from_slice(prompt, (1, prompt.len()), self.device())?;
        let logits = self.forward_last(&x, 0, Some(&mut cache))?;
        Ok((cache, logits))
    }

    /// Next-token logits for B independent sequences that each add one token at the end of their
    /// own cache (continuous batching in a server). tokens: B ids -> (B, V).
    pub fn forward_step_batch(&self, tokens: &[u32], caches: &mut [KvCache]) -> Result<Tensor> {
        let b = tokens.len();
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        if let Some(&p) = positions.iter().find(|&&p| p >= self.cfg.context) {
            return Err(crate::error::Error::Mismatch(format!(
                "position {p} is past the model's context of {}",
                self.cfg.context
            )));
        }
        let dev = self.device();
        let ids = Tensor::from_slice(tokens, b, dev)?;
        let mut x = self.wte.index_select(&ids, 0)?.reshape((b, 1, ()))?;
        if let Some(wpe) = &self.wpe {
            let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let pe = wpe.index_select(&Tensor::from_vec(pos, b, dev)?, 0)?;
            x = x.broadcast_add(&pe.reshape((b, 1, ()))?)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let mut layer: Vec<&mut LayerKv> = caches.iter_mut().map(|c| c.layer_mut(i)).collect();
            x = block.forward_ragged(&x, self.rope.as_ref(), &positions, &mut layer)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        let h = self.ln_f.forward(&x)?;
        Ok(self.logits(&h)?.squeeze(1)?)
    }

    /// Switches training mode on or off (evaluation, generation): LoRA dropout, and, on the CPU in
    /// f32, GPT-2 blocks as single fused nodes whose weight gradients only
    /// [`Transformer::backward`] collects.
    pub fn set_training(&mut self, on: bool) {
        for b in &mut self.blocks {
            b.sink = on.then(|| self.grad_sink.clone());
            for l in b.linears_mut() {
                if let Some(a) = l.adapters_mut() {
                    a.training = on;
                }
            }
        }
    }

    pub fn dtype(&self) -> DType {
        self.wte.dtype()
    }
}
