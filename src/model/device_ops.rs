//! The training ops where the fused CPU kernels do not run (CUDA): attention's causal softmax, the
//! loss's log-softmax, norms and linear layers with a bias, written so that no large tensor goes
//! through candle's broadcasting or reducing kernels.
//!
//! Why: candle's CUDA kernels for a broadcast binary op (`broadcast_sub`, `broadcast_div`, ...) and
//! for a reduction compute every element's strided index with 64-bit divisions and remainders, one
//! pair per dimension. The composed softmax makes about fifteen such passes per layer over the
//! (B, H, T, T) scores (forward and backward); for GPT-2 124M at context 1024 that is 100 million
//! elements a pass, and the same again over the (N, V) logits of the loss. The one H200 run
//! (README) spent about 0.6 s a step outside the matrix products, in f32 and bf16 alike, which fits
//! integer-bound index arithmetic rather than memory or tensor-core time.
//!
//! What runs instead:
//! - forward: candle's fused softmax kernel (`candle_nn::ops::softmax_last_dim`, one pass over
//!   contiguous rows) after adding a causal mask of the scores' whole shape (contiguous + contiguous
//!   is candle's index-free path; the mask is built once per shape and kept);
//! - backward: contiguous elementwise ops, with row sums and their expansion back to rows done as
//!   products with a vector of ones (cuBLAS), `dx = y * (dy - rowsum(dy * y))`;
//! - the loss: `nll = max(x) - ln(max(softmax(x))) - x[target]` (the log-sum-exp from the row's
//!   largest probability, which cannot underflow), and `dx = (softmax(x) - onehot) * g`;
//! - norms and biases: row means and the expansion of per-row and per-channel vectors as products
//!   with ones, so that candle's own backward passes stay index-free too.
//!
//! candle's fused softmax has no backward pass (DESIGN.md): [`with_grad`] attaches ours.
//!
//! `ops` and `fused` use these wherever their fused CPU kernels do not apply: on GPUs, and for
//! bf16 attention and linear layers on the CPU. With the fused kernels switched off
//! (`CHATFORGE_NO_FUSED=1`) the CPU runs all of them as a GPU does: `tests/portable_path.rs`
//! checks that path against transformers, `tests/device_ops.rs` each function against the
//! composed reference, values and gradients.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};
use std::sync::Mutex;

type CResult<T> = candle_core::Result<T>;

/// d loss / d x from (x, the forward's result, d loss / d result).
type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> CResult<Tensor> + Send + Sync;

/// `value` (computed from `x` outside candle's graph) as a tensor whose gradient with respect to
/// `x` is `backward(x, value, grad)`. Without a gradient to track it is `value` itself.
pub fn with_grad(
    x: &Tensor,
    value: Tensor,
    name: &'static str,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> CResult<Tensor> + Send + Sync + 'static,
) -> CResult<Tensor> {
    if !x.track_op() {
        return Ok(value);
    }
    // The result must be its own storage, contiguous from its start.
    let value = match value.is_contiguous() && value.layout().start_offset() == 0 {
        true => value,
        false => value.contiguous()?.affine(1.0, 0.0)?,
    };
    x.apply_op1(WithGrad {
        name,
        value: Mutex::new(Some(value)),
        backward: Box::new(backward),
    })
}

struct WithGrad {
    name: &'static str,
    /// Taken by the forward pass (the graph keeps the op, not this copy).
    value: Mutex<Option<Tensor>>,
    backward: Box<Backward>,
}

impl WithGrad {
    fn take(&self) -> CResult<Tensor> {
        self.value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned", self.name)))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    /// A copy of the value's storage (a device-to-device copy on a GPU), with its shape.
    fn storage<S>(&self, pick: impl Fn(&Storage) -> Option<&S>) -> CResult<(S, Shape)>
    where
        S: BackendStorage,
    {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        let s = pick(&storage).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: the value is on another device", self.name))
        })?;
        Ok((s.try_clone(layout)?, layout.shape().clone()))
    }
}

impl CustomOp1 for WithGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> CResult<(CpuStorage, Shape)> {
        self.storage(|s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> CResult<(CudaStorage, Shape)> {
        self.storage(|s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some((self.backward)(arg, res, grad_res)?))
    }
}

/// Row sums of x (N, C) as (N, 1): x @ ones(C, 1), a matrix-vector product.
fn row_sums(x: &Tensor) -> CResult<Tensor> {
    x.matmul(&ones((x.dim(1)?, 1), x)?)
}

/// x (N, C) with row i multiplied by s[i] for s (N, 1): x * (s @ ones(1, C)), the expansion an
/// outer product.
fn scale_rows(x: &Tensor, s: &Tensor) -> CResult<Tensor> {
    x * s.matmul(&ones((1, x.dim(1)?), x)?)?
}

/// Softmax's backward over rows (N, C) of y = softmax(x): dx = y * (dy - rowsum(dy * y)), in f32.
fn softmax_backward(y: &Tensor, dy: &Tensor) -> CResult<Tensor> {
    let (y, dy) = (y.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
    let gy = (dy.contiguous()? * &y)?;
    &gy - scale_rows(&y, &row_sums(&gy)?)?
}

/// The causal mask (0 or -inf) for scores of this shape, kept for the next call with the same
/// shape, new-token count, dtype and device (a training run asks for the same one every layer and
/// step).
fn causal_mask(
    shape: &Shape,
    t: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> CResult<Tensor> {
    type Key = (Vec<usize>, usize, DType);
    static LAST: Mutex<Option<(Key, Tensor)>> = Mutex::new(None);
    let key = (shape.dims().to_vec(), t, dtype);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, m)) = last.as_ref() {
        if *k == key && m.device().same_device(device) {
            return Ok(m.clone());
        }
    }
    // Free the old one before building the new one.
    *last = None;
    let (rows, s) = (
        shape.dims()[shape.rank() - 2],
        shape.dims()[shape.rank() - 1],
    );
    let mask = super::ops::causal_mask(rows, s, t, device)?
        .to_dtype(dtype)?
        .broadcast_as(shape)?
        .contiguous()?;
    *last = Some((key, mask.clone()));
    Ok(mask)
}

/// Softmax over the last dim of attention scores (..., R, S) whose row r is new token r mod t of t
/// following S - t cached ones; future keys get probability 0. As `ops::reference::causal_softmax`.
pub fn causal_softmax(scores: &Tensor, t: usize) -> CResult<Tensor> {
    let shape = scores.shape().clone();
    let s = scores.dim(D::Minus1)?;
    let x = scores.contiguous()?;
    // One new token sees every key: nothing to mask.
    let x = match t {
        1 => x,
        _ => (&x + causal_mask(&shape, t, x.dtype(), x.device())?)?,
    };
    // In f32 whatever the compute dtype, as the backward (candle's CUDA kernel accumulates bf16 in
    // f32 too; its CPU version would not).
    let y =
        candle_nn::ops::softmax_last_dim(&x.detach().to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
    with_grad(&x, y, "causal-softmax", move |x, y, dy| {
        let n = y.elem_count() / s;
        softmax_backward(&y.reshape((n, s))?, &dy.reshape((n, s))?)?
            .to_dtype(x.dtype())?
            .reshape(x.shape())
    })
}

/// Per-row negative log-likelihood of `targets` (N,) (i64, negative = ignored, 0 there) under
/// logits (N, V). As `ops::reference::token_nll`.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let x = logits.contiguous()?;
    let keep = targets.ge(0i64)?.to_dtype(x.dtype())?.unsqueeze(1)?;
    let safe = targets.maximum(0i64)?.to_dtype(DType::U32)?.unsqueeze(1)?;
    let xd = x.detach();
    let p = candle_nn::ops::softmax_last_dim(&xd)?;
    // The row's largest logit and largest probability are at the same place: one reduction.
    let top = xd.argmax_keepdim(1)?;
    let lse = (xd.gather(&top, 1)? - p.gather(&top, 1)?.log()?)?;
    let nll = ((lse - xd.gather(&safe, 1)?)? * &keep)?.squeeze(1)?;
    with_grad(&x, nll, "token-nll", move |x, _, g| {
        // (softmax - onehot(target)) * g, zero on ignored rows.
        let g = (g.unsqueeze(1)? * &keep)?;
        let p = candle_nn::ops::softmax_last_dim(x)?;
        scale_rows(&p, &g)?.scatter_add(&safe, &g.neg()?, 1)
    })
}

/// Ones of shape (rows, 1) or (1, cols) for expanding per-row or per-column vectors by a product.
fn ones(shape: (usize, usize), like: &Tensor) -> CResult<Tensor> {
    Tensor::ones(shape, like.dtype(), like.device())
}

/// v (C,) repeated as every row of an (n, C) matrix: ones(n, 1) @ v(1, C). Its gradient is the
/// column sums of the incoming one, the product's own backward (a matrix product too).
fn rows_of(v: &Tensor, n: usize) -> CResult<Tensor> {
    ones((n, 1), v)?.matmul(&v.reshape((1, ()))?)
}

/// LayerNorm (`centered`) or RMSNorm of x (..., C) over C, times `w`, plus `b`. As
/// `fused::norm::reference`, composed of matrix products with ones (row means, the expansion of
/// per-row and per-channel vectors) and elementwise ops on contiguous tensors, so that candle's
/// own backward passes are index-free too.
pub fn norm(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f64,
    centered: bool,
) -> CResult<Tensor> {
    let c = x.dim(D::Minus1)?;
    let n = x.elem_count() / c;
    let x2 = x.contiguous()?.reshape((n, c))?;
    let mean = |t: &Tensor| t.matmul(&(ones((c, 1), t)? / c as f64)?);
    let spread = |t: &Tensor| t.matmul(&ones((1, c), t)?);
    let xc = match centered {
        true => (&x2 - spread(&mean(&x2)?)?)?,
        false => x2,
    };
    let rstd = (mean(&xc.sqr()?)? + eps)?.sqrt()?.recip()?;
    let y = ((xc * spread(&rstd)?)? * rows_of(w, n)?)?;
    let y = match b {
        Some(b) => (y + rows_of(b, n)?)?,
        None => y,
    };
    y.reshape(x.shape())
}

/// y = x @ w^T (+ b) for x: (..., I), w: (O, I), b: (O,) -> (..., O), the bias added as a
/// contiguous (N, O) matrix of copies (`rows_of`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
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
