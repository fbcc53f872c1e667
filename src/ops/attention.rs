//! Causal self-attention over the fused qkv projection rows (B, T, (H + 2K) * D), grouped-query
//! (H query heads share K key/value heads), with RoPE and a KV cache. This file chooses how it
//! runs:
//!
//! - from the start of a sequence (training, scoring, a prompt into an empty cache): the fused CPU
//!   attention straight out of the projection (`kernels::cpu::attention`), RoPE on its rows first;
//! - past the start (decoding, a prompt after earlier turns) without gradients: the new keys and
//!   values appended to the cache, the queries attending over it in one CPU op;
//! - anywhere else (a GPU, bf16, gradients through a cache): composed candle ops around
//!   [`super::softmax::causal_softmax`].

use super::rope::Rope;
use crate::error::Result;
use crate::kernels::cpu;
use crate::model::kv_cache::LayerKv;
use candle_core::Tensor;

type CResult<T> = candle_core::Result<T>;

/// H query heads and K key/value heads of D channels.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// Attention of qkv (B, T, (H + 2K) * D) at positions start..start + T -> (B, T, H * D). With a
/// cache, the queries attend to the cached keys and values too, and the new ones are appended.
pub(crate) fn self_attention(
    qkv: Tensor,
    heads: Heads,
    rope: Option<&Rope>,
    start: usize,
    cache: Option<&mut LayerKv>,
) -> Result<Tensor> {
    let (b, t, _) = qkv.dims3()?;
    let Heads {
        n_head: h,
        n_kv_head: k,
        head_dim: d,
    } = heads;
    let fresh = cache.as_ref().is_none_or(|c| c.len() == 0);
    let rope_fused = rope.is_none() || cpu::features::applies(&qkv);
    if start == 0 && fresh && rope_fused {
        let qkv = roped(qkv, heads, rope, 0)?;
        let y = causal_attention(&qkv, h, k, d)?;
        if let Some(c) = cache {
            let (kk, v) = kv_heads(&qkv, heads)?;
            c.set(kk, v)?;
        }
        return Ok(y);
    }
    if cpu::features::applies(&qkv) && !qkv.track_op() {
        return attend_cached(qkv, heads, rope, start, cache);
    }
    let qkv = qkv.reshape((b, t, h + 2 * k, d))?;
    let (q, kk, v) = split_heads(&qkv, heads, rope, start)?;
    let (kk, v) = match cache {
        Some(c) => append_kv(c, &kk, &v)?,
        None => (kk, v),
    };
    attend(&q, &kk, &v, k)
}

/// One new token for each of B independent sequences, each at its own position with its own
/// cache: qkv (B, 1, (H + 2K) * D) -> (B, 1, H * D), attention per sequence.
pub(crate) fn ragged_attention(
    qkv: Tensor,
    heads: Heads,
    rope: Option<&Rope>,
    positions: &[usize],
    caches: &mut [&mut LayerKv],
) -> Result<Tensor> {
    let b = qkv.dim(0)?;
    let (h, k, d) = (heads.n_head, heads.n_kv_head, heads.head_dim);
    if cpu::features::applies(&qkv) && !qkv.track_op() {
        let rows = caches
            .iter_mut()
            .enumerate()
            .map(|(i, c)| attend_cached(qkv.narrow(0, i, 1)?, heads, rope, positions[i], Some(c)))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Tensor::cat(&rows, 0)?);
    }
    let qkv = qkv.reshape((b, 1, h + 2 * k, d))?;
    let mut rows = Vec::with_capacity(b);
    for (i, cache) in caches.iter_mut().enumerate() {
        let (q, kk, v) = split_heads(&qkv.narrow(0, i, 1)?, heads, rope, positions[i])?;
        let (kk, v) = append_kv(cache, &kk, &v)?;
        rows.push(attend(&q, &kk, &v, k)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Causal self-attention of qkv (B, T, (H + 2K) * D) -> (B, T, H * D) from position 0: the fused
/// CPU op in f32, elsewhere composed around [`super::softmax::causal_softmax`].
pub fn causal_attention(qkv: &Tensor, h: usize, k: usize, d: usize) -> CResult<Tensor> {
    if !cpu::features::applies(qkv) {
        return composed(qkv, (h, k, d), super::softmax::causal_softmax);
    }
    cpu::attention::causal_attention(qkv, h, k, d)
}

/// The composed candle version, for tests: split heads, scores, masked softmax, weighted values.
pub fn reference(qkv: &Tensor, h: usize, k: usize, d: usize) -> CResult<Tensor> {
    composed(qkv, (h, k, d), super::softmax::reference)
}

/// Split heads, scores, `softmax` (masked, with t new tokens), weighted values.
fn composed(
    qkv: &Tensor,
    (h, k, d): (usize, usize, usize),
    softmax: fn(&Tensor, usize) -> CResult<Tensor>,
) -> CResult<Tensor> {
    let g = cpu::attention::geometry(qkv, h, k, d)?;
    let (b, t) = (g.b, g.t);
    let qkv = qkv.reshape((b, t, h + 2 * k, d))?;
    let heads = |from: usize, n: usize| qkv.narrow(2, from, n)?.transpose(1, 2)?.contiguous();
    let (q, kk, v) = (heads(0, h)?, heads(h, k)?, heads(h + k, k)?);
    let rep = h / k;
    let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, k, rep * t, d))?;
    let att = q.matmul(&kk.t()?)?;
    let att = softmax(&att, t)?;
    let y = att.matmul(&v)?.reshape((b, h, t, d))?;
    y.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}

/// Inference past the start of a sequence (decoding): RoPE on the rows of qkv (B, T, W) at
/// positions start.., the new keys and values appended to the cache, the queries attending
/// over it in one op (`kernels::cpu::attention::cached_attention`) -> (B, T, H * D).
fn attend_cached(
    qkv: Tensor,
    heads: Heads,
    rope: Option<&Rope>,
    start: usize,
    cache: Option<&mut LayerKv>,
) -> Result<Tensor> {
    let qkv = roped(qkv, heads, rope, start)?;
    let (kk, v) = kv_heads(&qkv, heads)?;
    let (kk, v) = match cache {
        Some(c) => {
            c.append(&kk, &v)?;
            c.views()?
        }
        None => (kk, v),
    };
    Ok(cpu::attention::cached_attention(
        &qkv,
        &kk,
        &v,
        heads.n_head,
    )?)
}

/// qkv (B, T, W) with RoPE (if the model has it) on its query and key heads at positions start...
fn roped(qkv: Tensor, heads: Heads, rope: Option<&Rope>, start: usize) -> Result<Tensor> {
    Ok(match rope {
        Some(r) => r.apply_rows(&qkv, heads.n_head + heads.n_kv_head, start)?,
        None => qkv,
    })
}

/// The key and value heads of projection rows (B, T, W) -> (B, K, T, D) each, as the cache
/// holds them.
fn kv_heads(qkv: &Tensor, heads: Heads) -> Result<(Tensor, Tensor)> {
    let (b, t, _) = qkv.dims3()?;
    let (h, k, d) = (heads.n_head, heads.n_kv_head, heads.head_dim);
    let all = qkv.reshape((b, t, h + 2 * k, d))?;
    let kk = all.narrow(2, h, k)?.transpose(1, 2)?.contiguous()?;
    let v = all.narrow(2, h + k, k)?.transpose(1, 2)?.contiguous()?;
    Ok((kk, v))
}

/// Query, key and value heads from the fused projection, RoPE applied at positions start...
/// qkv: (B, T, H + 2K, D) -> q: (B, H, T, D), k, v: (B, K, T, D).
fn split_heads(
    qkv: &Tensor,
    heads: Heads,
    rope: Option<&Rope>,
    start: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (h, k) = (heads.n_head, heads.n_kv_head);
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
fn attend(q: &Tensor, kk: &Tensor, v: &Tensor, k: usize) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    // Grouped-query attention without copying keys: the H/K query heads that share a key head
    // are stacked along time. q: (B, K, H/K * T, D), kk^T: (B, K, D, S) -> (B, K, H/K * T, S).
    let rep = h / k;
    let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, k, rep * t, d))?;
    let att = q.matmul(&kk.t()?)?;
    let att = super::softmax::causal_softmax(&att, t)?;
    // (B, K, H/K * T, S) @ (B, K, S, D) -> (B, H, T, D) -> (B, T, H * D)
    let y = att.matmul(v)?.reshape((b, h, t, d))?;
    Ok(y.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
}

/// Appends new keys/values (B, K, T, D) to a layer's cache and returns the whole of it, contiguous
/// (the composed attention, off the fused path).
fn append_kv(c: &mut LayerKv, kk: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    c.append(kk, v)?;
    let (kk, v) = c.views()?;
    Ok((kk.contiguous()?, v.contiguous()?))
}
