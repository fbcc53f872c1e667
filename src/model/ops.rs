//! Fused CPU operations with forward *and* backward passes (candle `CustomOp`s), used where the
//! composed candle ops would materialise several copies of a large tensor:
//!
//! - `token_nll`: log-softmax + gather of the target, on (N, V) logits; the gradient
//!   `softmax - onehot` is computed directly in the backward pass.
//! - `causal_softmax`: the causal mask and the softmax of attention scores in one pass.
//!
//! Elsewhere (a GPU, or bf16 on the CPU) they run as `device_ops` builds them: candle's fused
//! softmax kernel and index-free elementwise ops. Both have backward passes, and tests compare each
//! with the composed candle ops of `reference`, values and gradients.

use super::fused::{applies, f32_data, filled, for_each_chunk_mut, parallel_map, with_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use std::sync::Arc;

type CResult<T> = candle_core::Result<T>;

/// log(sum(exp(row))) computed stably.
pub fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = super::fused::exp::exp_shifted_total(row, max);
    max + sum.ln()
}

struct TokenNll {
    targets: Arc<Vec<i64>>,
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    /// logits (N, V) -> nll (N,), 0 where the target is negative (ignored).
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let x = f32_data(storage, layout, self.name())?;
        let out = parallel_map(n, |i| row_nll(&x[i * v..(i + 1) * v], self.targets[i]).0);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let g = grad_res.to_vec1::<f32>()?;
        let grad = with_f32(arg, self.name(), |x| {
            let mut out = x.to_vec();
            for_each_chunk_mut(&mut out, v, |i, o| {
                let lse = logsumexp(o);
                nll_grad_row(o, lse, self.targets[i], g[i])
            });
            out
        })?;
        Ok(Some(Tensor::from_vec(grad, (n, v), arg.device())?))
    }
}

/// (nll, log-sum-exp) of one row of logits for target `t`; the nll is 0 where `t` is negative
/// (ignored).
pub(crate) fn row_nll(row: &[f32], t: i64) -> (f32, f32) {
    let lse = logsumexp(row);
    (if t < 0 { 0.0 } else { lse - row[t as usize] }, lse)
}

/// One row of logits (log-sum-exp `lse`) turned in place into d nll / d logits =
/// (softmax - onehot(t)) * g; zeros where the target is ignored or no gradient arrives.
pub(crate) fn nll_grad_row(row: &mut [f32], lse: f32, t: i64, g: f32) {
    if t < 0 || g == 0.0 {
        row.fill(0.0);
        return;
    }
    super::fused::exp::exp_shifted_sum(row, lse);
    row.iter_mut().for_each(|p| *p *= g);
    row[t as usize] -= g;
}

/// The targets as i64 ids, an error naming the first outside a vocabulary of `v`.
pub(crate) fn checked_targets(targets: &Tensor, v: usize) -> CResult<Vec<i64>> {
    let t: Vec<i64> = targets.to_vec1()?;
    if let Some(bad) = t.iter().find(|&&x| x >= v as i64) {
        candle_core::bail!("target id {bad} is outside the vocabulary of {v}")
    }
    Ok(t)
}

/// Per-row negative log-likelihood of `targets` (i64, negative = ignored) under `logits` (N, V).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let t = checked_targets(targets, logits.dim(1)?)?;
    if applies(logits) {
        return logits.contiguous()?.apply_op1(TokenNll {
            targets: Arc::new(t),
        });
    }
    super::device_ops::token_nll(logits, targets)
}

/// Row r of the scores sees keys 0..=past + (r mod t), with past = S - t.
struct CausalSoftmax {
    t: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    /// scores (..., R, S) -> probabilities, zero on future keys.
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let s = layout.shape().dims()[layout.shape().rank() - 1];
        let x = f32_data(storage, layout, self.name())?;
        let (t, past) = (self.t, s - self.t);
        let mut out = vec![0f32; x.len()];
        for_each_chunk_mut(&mut out, s, |r, o| {
            let row = &x[r * s..(r + 1) * s];
            let visible = past + (r % t) + 1;
            let row = &row[..visible];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            o[..visible].copy_from_slice(row);
            let inv = 1.0 / super::fused::exp::exp_shifted_sum(&mut o[..visible], max);
            o[..visible].iter_mut().for_each(|p| *p *= inv);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            res.apply_op2(&grad_res.contiguous()?, SoftmaxBackward)?,
        ))
    }
}

/// dx = y * (dy - sum_j(dy_j * y_j)) for y = softmax(x), row by row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let s = l1.shape().dims()[l1.shape().rank() - 1];
        let y = f32_data(s1, l1, self.name())?;
        let dy = f32_data(s2, l2, self.name())?;
        let mut out = vec![0f32; y.len()];
        for_each_chunk_mut(&mut out, s, |r, o| {
            let (y, dy) = (&y[r * s..(r + 1) * s], &dy[r * s..(r + 1) * s]);
            let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
            for ((oj, &yj), &dyj) in o.iter_mut().zip(y).zip(dy) {
                *oj = yj * (dyj - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dim of attention scores (..., R, S) where row r is query time r mod t
/// of t new tokens following S - t cached ones; future keys get probability 0.
pub fn causal_softmax(scores: &Tensor, t: usize) -> CResult<Tensor> {
    let s = scores.dim(D::Minus1)?;
    let rows = scores.dim(D::Minus2)?;
    if t == 0 || t > s || rows % t != 0 {
        candle_core::bail!("causal_softmax: {rows} rows, {s} keys and {t} new tokens do not fit")
    }
    if applies(scores) {
        return scores.contiguous()?.apply_op1(CausalSoftmax { t });
    }
    super::device_ops::causal_softmax(scores, t)
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

/// out = exp(2u) with u = k (x + a x^3), GELU's tanh argument, clamped to +-15 where tanh is
/// +-1 in f32; then tanh u = 1 - 2 / (out + 1).
fn exp_2u(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (2.0 * GELU_K * (v + GELU_A * v * v * v)).clamp(-30.0, 30.0);
    }
    super::fused::exp::exp_shifted_sum(out, 0.0);
}

/// gelu(x), elementwise over the cores: 0.5 x (1 + tanh u) = x E / (E + 1), E = exp(2u).
pub(crate) fn gelu_forward(x: &[f32]) -> Vec<f32> {
    filled(x.len(), 4096, |i, o| {
        let x = &x[i * 4096..][..o.len()];
        exp_2u(x, o);
        for (oj, &v) in o.iter_mut().zip(x) {
            *oj = v * *oj / (*oj + 1.0);
        }
    })
}

/// out = dy * gelu'(x): dy (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 a x^2)).
pub(crate) fn gelu_backward(x: &[f32], dy: &[f32], out: &mut [f32]) {
    for_each_chunk_mut(out, 4096, |i, o| {
        let (x, dy) = (&x[i * 4096..][..o.len()], &dy[i * 4096..][..o.len()]);
        exp_2u(x, o);
        for ((oj, &v), &g) in o.iter_mut().zip(x).zip(dy) {
            let th = 1.0 - 2.0 / (*oj + 1.0);
            let d = 0.5 * (1.0 + th)
                + 0.5 * v * (1.0 - th * th) * GELU_K * (1.0 + 3.0 * GELU_A * v * v);
            *oj = g * d;
        }
    });
}

/// exp(-gate), clamped so that it stays finite, into `o`: sigmoid(gate) = 1 / (1 + o).
fn exp_neg(gate: &[f32], o: &mut [f32]) {
    o.iter_mut()
        .zip(gate)
        .for_each(|(o, &g)| *o = (-g).clamp(-80.0, 80.0));
    super::fused::exp::exp_shifted_sum(o, 0.0);
}

/// SwiGLU's gating, silu(gate) * up, on rows (..., 2I) of gate then up -> (..., I). Backward, with
/// s = sigmoid(gate): d_up = dy gate s, d_gate = dy up s (1 + gate (1 - s)).
struct SwiGlu(usize);

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (h, i) = (f32_data(storage, layout, self.name())?, self.0);
        let out = swiglu_forward(h, i);
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().expect("rows") = i;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, h: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let i = self.0;
        let dh = with_f32(h, self.name(), |h| {
            with_f32(dy, self.name(), |dy| swiglu_backward(h, dy, i))
        })??;
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

/// silu(gate) * up on rows (N, 2I) of gate then up -> (N, I).
pub(crate) fn swiglu_forward(h: &[f32], i: usize) -> Vec<f32> {
    filled(h.len() / 2, 16 * i, |ci, rows| {
        for (r, o) in rows.chunks_exact_mut(i).enumerate() {
            let (gate, up) = h[(ci * 16 + r) * 2 * i..][..2 * i].split_at(i);
            exp_neg(gate, o);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + *o) * u;
            }
        }
    })
}

/// The gradient (N, 2I) of the rows h (N, 2I) of gate then up, for the gradient dy (N, I) of
/// silu(gate) * up.
pub(crate) fn swiglu_backward(h: &[f32], dy: &[f32], i: usize) -> Vec<f32> {
    filled(h.len(), 32 * i, |ci, rows| {
        for (r, o) in rows.chunks_exact_mut(2 * i).enumerate() {
            let row = ci * 16 + r;
            let (gate, up) = h[row * 2 * i..][..2 * i].split_at(i);
            let dyr = &dy[row * i..][..i];
            let (dg, du) = o.split_at_mut(i);
            exp_neg(gate, dg);
            for j in 0..i {
                let sg = 1.0 / (1.0 + dg[j]);
                du[j] = dyr[j] * gate[j] * sg;
                dg[j] = dyr[j] * up[j] * sg * (1.0 + gate[j] * (1.0 - sg));
            }
        }
    })
}

/// silu(gate) * up for h (..., 2I) holding gate then up -> (..., I), one pass over the rows (and
/// one for backward), f32 on the CPU; elsewhere candle's ops.
pub fn swiglu(h: &Tensor, i: usize) -> CResult<Tensor> {
    if h.dims().last() != Some(&(2 * i)) {
        candle_core::bail!("swiglu: rows of {:?} are not gate and up of {i}", h.dims())
    }
    if !applies(h) {
        let gate = h.narrow(D::Minus1, 0, i)?;
        let up = h.narrow(D::Minus1, i, i)?;
        return candle_nn::ops::silu(&gate)? * up;
    }
    h.contiguous()?.apply_op1(SwiGlu(i))
}

/// GPT-2's tanh GELU, elementwise; the backward pass is one more elementwise kernel instead of the
/// dozen composed ops candle's own `gelu` backward builds.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        Ok((CpuStorage::F32(gelu_forward(x)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2(&grad_res.contiguous()?, GeluBackward)?,
        ))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-tanh-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let dy = f32_data(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        gelu_backward(x, dy, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GPT-2's GELU (tanh approximation, "gelu_new").
pub fn gelu(x: &Tensor) -> CResult<Tensor> {
    if applies(x) {
        return x.contiguous()?.apply_op1(Gelu);
    }
    x.gelu()
}

/// The composed (unfused) versions, for tests that compare the two.
pub mod reference {
    use super::*;

    pub fn token_nll(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
        let keep = targets.ge(0i64)?;
        let safe = keep
            .where_cond(targets, &targets.zeros_like()?)?
            .to_dtype(DType::U32)?;
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
        picked.neg()? * keep.to_dtype(logits.dtype())?
    }

    pub fn causal_softmax(scores: &Tensor, t: usize) -> CResult<Tensor> {
        let (s, rows) = (scores.dim(D::Minus1)?, scores.dim(D::Minus2)?);
        let mask = causal_mask(rows, s, t, scores.device())?.to_dtype(scores.dtype())?;
        candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)
    }
}

/// The additive causal mask (rows, s): 0 where row r (new token r mod t of t, after s - t cached
/// ones) may look, -inf on the keys after it.
pub(crate) fn causal_mask(
    rows: usize,
    s: usize,
    t: usize,
    device: &candle_core::Device,
) -> CResult<Tensor> {
    let past = s - t;
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            (0..s).map(move |j| {
                if j > past + r % t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, s), device)
}

/// y = x @ w^T for a handful of rows of x (decoding): every output is a dot product of a
/// contiguous weight row with x, split over the cores. GEMM kernels are built for large M and run
/// this shape on one core. Inference only (no backward): `linear` uses it when no gradient is tracked.
struct MatVec;

/// Sum of a[i] * b[i] with 32 independent accumulators (four 8-wide vectors, enough to hide the
/// FMA latency) so that the compiler vectorises it.
#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_body(a, b)
}

/// x (M, K) times the rows of w (N, K) -> (M, N), parallel over output columns (weight rows), so
/// that each weight row is read once for all M rows.
fn matvec<W: Sync>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    dot: impl Fn(&[f32], &[W]) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let chunk = n
        .div_ceil(candle_core::utils::get_num_threads() * 8)
        .max(64);
    let cols = parallel_map(n.div_ceil(chunk), |c| {
        let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(n));
        let mut part = vec![0f32; m * (hi - lo)];
        for j in lo..hi {
            let wr = &w[j * k..(j + 1) * k];
            for r in 0..m {
                part[r * (hi - lo) + j - lo] = dot(&x[r * k..(r + 1) * k], wr);
            }
        }
        (lo, part)
    });
    for (lo, part) in cols {
        let width = part.len() / m;
        for r in 0..m {
            out[r * n + lo..r * n + lo + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    out
}

/// Dot product of f32 activations with f16 weights, in f32.
fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[f32], b: &[half::f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n elements of both; f16 is 2 bytes, eight to a 128-bit load.
        let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i) as *const __m128i);
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(pb));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(1)));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa), w0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), w1, acc1);
        i += 16;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1));
    let tail: f32 = a[i..n]
        .iter()
        .zip(&b[i..n])
        .map(|(x, y)| x * y.to_f32())
        .sum();
    lanes.iter().sum::<f32>() + tail
}

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "matvec"
    }

    /// x: (M, K), w: (N, K) -> (M, N).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("matvec: x has {k} columns but w has {k2}")
        }
        let x = f32_data(s1, l1, self.name())?;
        let out = match s2 {
            CpuStorage::F16(w) => {
                let (a, b) = l2.contiguous_offsets().ok_or_else(|| {
                    candle_core::Error::Msg("matvec: the weight must be contiguous".into())
                })?;
                matvec(x, &w[a..b], (m, n, k), dot_f16)
            }
            _ => matvec(x, f32_data(s2, l2, self.name())?, (m, n, k), dot),
        };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Rows up to which a product is a decoding step (bound by reading the weight, not by arithmetic):
/// the matrix-vector path here, and quantized weights in `Transformer`, take over below it.
pub const DECODE_ROWS: usize = 16;

/// x @ w^T for x: (M, K) f32, w: (N, K) f32 or f16, when M is small and nothing needs a gradient;
/// `None` when the fast path does not apply.
pub fn small_matmul_t(x: &Tensor, w: &Tensor) -> CResult<Option<Tensor>> {
    let m = x.dim(0)?;
    let w_ok = w.device().is_cpu() && matches!(w.dtype(), DType::F32 | DType::F16);
    if m > DECODE_ROWS || !applies(x) || !w_ok || !w.is_contiguous() || w.track_op() || x.track_op()
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2_no_bwd(w, &MatVec)?))
}
