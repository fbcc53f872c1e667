//! Linear layers: y = x @ w^T (+ b), with an optional LoRA adapter and, for decoding, a quantized
//! copy of the weight; and the output projection to the vocabulary. This file chooses how a
//! product runs: the fused CPU GEMM (training, scoring, prompts), the matrix-vector product or
//! quantized blocks (decoding a few rows without gradients), or the portable formulation.

use super::ones::rows_of;
use crate::error::Result;
use crate::kernels::cpu;
use crate::kernels::cpu::blockq::{BlockWeight, Format};
use crate::model::lora::Adapter;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

type CResult<T> = candle_core::Result<T>;

/// Rows up to which a product is a decoding step (bound by reading the weight, not by arithmetic):
/// the matrix-vector path here, and quantized weights in `Transformer`, take over below it.
pub const DECODE_ROWS: usize = 16;

/// Whether x (..., in) has at most [`DECODE_ROWS`] rows.
pub fn decoding_rows(x: &Tensor) -> bool {
    x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1) <= DECODE_ROWS
}

/// x @ w^T for x: (M, K) f32, w: (N, K) f32 or f16, when M is small and nothing needs a gradient;
/// `None` when the fast path does not apply.
pub fn small_matmul_t(x: &Tensor, w: &Tensor) -> CResult<Option<Tensor>> {
    let m = x.dim(0)?;
    let w_ok = w.device().is_cpu() && matches!(w.dtype(), DType::F32 | DType::F16);
    if m > DECODE_ROWS
        || !cpu::features::applies(x)
        || !w_ok
        || !w.is_contiguous()
        || w.track_op()
        || x.track_op()
    {
        return Ok(None);
    }
    Ok(Some(cpu::matvec::matmul_t(x, w)?))
}

/// y = x @ w^T (+ b) for x: (..., I), w: (O, I), b: (O,) -> (..., O); the fused CPU GEMM in f32,
/// elsewhere [`portable`].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    if cpu::features::applies(x) && cpu::features::applies(w) {
        return cpu::linear::linear(x, w, b);
    }
    portable(x, w, b)
}

/// gelu(x @ w^T + b) for x: (..., I), w: (O, I), b: (O,) -> (..., O): GPT-2's up-projection and
/// activation as one fused CPU op in f32, elsewhere the two ops.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let applies = cpu::features::applies;
    if applies(x) && applies(w) && applies(b) {
        return cpu::linear::linear_gelu(x, w, b);
    }
    super::activation::gelu(&portable(x, w, Some(b))?)
}

/// y = x @ w^T (+ b) for x: (..., I), w: (O, I), b: (O,) -> (..., O), the bias added as a
/// contiguous (N, O) matrix of copies (`rows_of`).
pub fn portable(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    let (o, i) = w.dims2()?;
    let x2 = x.reshape(((), i))?;
    let y = x2.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => (y + rows_of(b, x2.dim(0)?)?)?,
        None => y,
    };
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    y.reshape(dims)
}

/// The composed candle version, for tests.
pub fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    // As a plain 2-D product (every backend's matmul takes it), then back to x's leading dims.
    let (o, i) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let y = x.reshape(((), i))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    y.reshape(dims)
}

/// Weights kept in quantized blocks by internal name (`{layer}.weight`): a GGUF file's, which
/// inference uses as they lie instead of an f32 copy.
pub type BlockWeights = BTreeMap<String, Arc<BlockWeight>>;

/// A linear layer's weight `[out, in]`, bias, and LoRA adapter; for inference, optionally a
/// quantized copy of the weight (see [`Linear::quantize`]), or only the quantized weight.
pub struct Linear {
    /// The weight as a tensor; None where the layer holds only its quantized blocks.
    pub w: Option<Tensor>,
    pub b: Option<Tensor>,
    pub lora: Option<Adapter>,
    q: Option<Quantized>,
}

impl Linear {
    /// The layer `name` (`{name}.weight`, `{name}.bias`) of a model's weights, its weight from
    /// `blocks` where it is there, taking its adapter out of `adapters`.
    pub fn new(
        w: &BTreeMap<String, Tensor>,
        blocks: &BlockWeights,
        name: &str,
        adapters: &mut BTreeMap<String, Adapter>,
    ) -> Self {
        let key = format!("{name}.weight");
        let q = blocks.get(&key).map(|q| Quantized::Blocks(q.clone()));
        Linear {
            w: q.is_none().then(|| w[&key].clone()),
            b: w.get(&format!("{name}.bias")).cloned(),
            lora: adapters.remove(name),
            q,
        }
    }

    /// x: (B, T, in) -> (B, T, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.q, &self.w) {
            (Some(q), Some(_)) if use_quantized(x) => q.linear(x, self.b.as_ref()),
            (Some(q), None) => q.linear(x, self.b.as_ref()),
            (_, Some(w)) => linear_with(x, w, self.b.as_ref(), self.lora.as_ref()),
            (None, None) => unreachable!("a layer holds its weight or its blocks"),
        }
    }

    /// gelu(forward(x)): one fused op where the layer has a bias, no adapter and no quantized copy
    /// and x is not a decoding step (training, scoring, prompts).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let decoding = decoding_rows(x) && !self.w.as_ref().is_some_and(|w| w.track_op());
        if let (None, None, Some(b), Some(w), false) =
            (&self.lora, &self.q, &self.b, &self.w, decoding)
        {
            return Ok(linear_gelu(x, w, b)?);
        }
        Ok(super::activation::gelu(&self.forward(x)?)?)
    }

    /// Gives the layer a `dtype` copy of its weight for decoding steps, unless it carries a LoRA
    /// adapter or its width is not a multiple of the block size.
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<()> {
        if let (None, Some(w)) = (&self.lora, &self.w) {
            self.q = quantize_weight(w, dtype)?;
        }
        Ok(())
    }
}

/// x: (B, T, in) -> (B, T, out) through `w` [out, in], an optional bias and an optional LoRA adapter.
fn linear_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    lora: Option<&Adapter>,
) -> Result<Tensor> {
    let (bsz, t, cin) = x.dims3()?;
    let x2 = x.reshape((bsz * t, cin))?;
    if let Some(y) = small_matmul_t(&x2, w)? {
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
        None => Ok(linear(x, w, b)?),
        Some(a) => {
            let y = linear(&x2, w, b)?;
            Ok(a.apply(&x2, y)?.reshape((bsz, t, ()))?)
        }
    }
}

/// A quantized copy of a linear layer's weight, for decoding.
enum Quantized {
    /// candle's quantized matmul: x is quantized to 8 bits per block and dotted with the weight's
    /// blocks, never expanding the weight to f32.
    Ggml(QMatMul),
    /// chatforge's blocks in GGML's layout (`kernels::cpu::blockq`).
    Blocks(Arc<BlockWeight>),
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

/// A quantized copy of `w` [out, in], or None where the format does not fit (rows not a multiple
/// of the block size).
fn quantize_weight(w: &Tensor, dtype: GgmlDType) -> Result<Option<Quantized>> {
    if !w.device().is_cpu() || w.dim(1)? % dtype.block_size() != 0 {
        return Ok(None);
    }
    if dtype == GgmlDType::Q4_1 {
        let q = BlockWeight::quantize(w, Format::Q4)?;
        return Ok(q.map(|q| Quantized::Blocks(Arc::new(q))));
    }
    let q = QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?;
    Ok(Some(Quantized::Ggml(QMatMul::from_qtensor(q)?)))
}
