//! Rotary position embedding applied in place of the heads' layout change: on the first `heads`
//! heads (queries, then keys) of every row of the fused qkv projection (B, T, W), at positions
//! start..start + T, in the Hugging Face "rotate half" layout (channel i pairs with i + D/2):
//!
//!   y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin
//!
//! so that the fused attention reads queries and keys straight out of the rows, as for GPT-2.
//! Backward is the inverse rotation (sin negated); the value heads pass through.

use super::parallel::filled;
use super::storage::{f32_data, with_f32, CResult};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

struct RopeRows {
    /// (context, D) tables; row p holds the angles of position p, both halves.
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    /// Position of the rows' first token.
    start: usize,
}

impl RopeRows {
    /// The rows of `x` (B, T, W) with the first `heads` heads rotated by +angle (or -angle).
    fn rotate(&self, x: &[f32], t: usize, w: usize, inverse: bool) -> CResult<Vec<f32>> {
        with_f32(&self.cos, "rope", |cos| {
            with_f32(&self.sin, "rope", |sin| {
                let tables = Tables {
                    cos,
                    sin,
                    d: self.cos.dim(1)?,
                };
                Ok(tables.rotate(x, t, w, self.heads, self.start, inverse))
            })
        })??
    }
}

/// The cos and sin tables (context, D) on slices.
pub(super) struct Tables<'a> {
    pub(super) cos: &'a [f32],
    pub(super) sin: &'a [f32],
    /// Head width.
    pub(super) d: usize,
}

impl Tables<'_> {
    /// Rows of x (sequences of T rows of W) with their first `heads` heads rotated by +angle
    /// (or -angle, the backward pass) at positions start..start + T.
    pub(super) fn rotate(
        &self,
        x: &[f32],
        t: usize,
        w: usize,
        heads: usize,
        start: usize,
        inverse: bool,
    ) -> Vec<f32> {
        let (d, half) = (self.d, self.d / 2);
        let sign = if inverse { -1.0 } else { 1.0 };
        // Tasks of 16 rows.
        filled(x.len(), 16 * w, |ci, rows| {
            let src = &x[ci * 16 * w..][..rows.len()];
            rows.copy_from_slice(src);
            for (r, row) in rows.chunks_exact_mut(w).enumerate() {
                let pos = start + (ci * 16 + r) % t;
                let (c, s) = (&self.cos[pos * d..][..half], &self.sin[pos * d..][..half]);
                for head in row[..heads * d].chunks_exact_mut(d) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, z, si) = (x1[i], x2[i], sign * s[i]);
                        x1[i] = a * c[i] - z * si;
                        x2[i] = z * c[i] + a * si;
                    }
                }
            }
        })
    }
}

impl CustomOp1 for RopeRows {
    fn name(&self) -> &'static str {
        "rope-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (_, t, w) = l.shape().dims3()?;
        let x = f32_data(s, l, self.name())?;
        Ok((
            CpuStorage::F32(self.rotate(x, t, w, false)?),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let (_, t, w) = x.dims3()?;
        let dx = with_f32(dy, self.name(), |g| self.rotate(g, t, w, true))??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// RoPE on the first `heads` heads of D channels (D = the tables' width) of every row of qkv
/// (B, T, W), at positions start..start + T; f32 on the CPU (callers check `features::applies`).
pub fn rope_rows(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    start: usize,
) -> CResult<Tensor> {
    let (_, t, w) = qkv.dims3()?;
    let (ctx, d) = cos.dims2()?;
    if start + t > ctx || heads * d > w || d % 2 != 0 {
        candle_core::bail!(
            "rope: {heads} heads of {d} in rows of {w} at {t} positions (tables for {ctx})"
        )
    }
    let op = RopeRows {
        cos: cos.clone(),
        sin: sin.clone(),
        heads,
        start,
    };
    qkv.contiguous()?.apply_op1(op)
}
