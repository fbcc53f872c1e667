//! Reading candle's CPU storage as f32 slices, the input side of every kernel here.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

pub(crate) type CResult<T> = candle_core::Result<T>;

/// The f32 data of a contiguous CPU storage.
pub(crate) fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> CResult<&'a [f32]> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(&storage.as_slice::<f32>()?[a..b])
}

/// Runs `f` on the f32 data of a CPU tensor (made contiguous first).
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => Ok(f(f32_data(cpu, layout, op)?)),
        _ => candle_core::bail!("{op}: CPU tensor expected"),
    }
}

/// Runs `f` on the f32 data of a CPU tensor whose rows (last dimension) are contiguous, read in
/// place whatever its other strides (a view with room between rows, such as a KV cache's
/// buffers): the storage from the tensor's first element, and its strides. A tensor with strided
/// rows is made contiguous first.
pub(crate) fn with_f32_rows<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32], &[usize]) -> R,
) -> CResult<R> {
    let t = match t.stride().last() {
        Some(1) => t.clone(),
        _ => t.contiguous()?,
    };
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => {
            let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
            Ok(f(data, layout.stride()))
        }
        _ => candle_core::bail!("{op}: CPU tensor expected"),
    }
}

/// Runs `f` on the f32 data of CPU tensors (each made contiguous first), in their order.
pub(crate) fn with_f32_list<R>(
    ts: &[Tensor],
    op: &str,
    f: impl FnOnce(&[&[f32]]) -> R,
) -> CResult<R> {
    let ts = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<CResult<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (st, layout) in &guards {
        match &**st {
            Storage::Cpu(cpu) => slices.push(f32_data(cpu, layout, op)?),
            _ => candle_core::bail!("{op}: CPU tensor expected"),
        }
    }
    Ok(f(&slices))
}

/// A backward pass that turns two f32 CPU tensors of one shape (the forward's input or result,
/// and the incoming gradient) into a gradient of that shape: `f(a, b, row length, out)`.
pub(crate) struct ZipBackward {
    pub name: &'static str,
    pub f: fn(&[f32], &[f32], usize, &mut [f32]),
}

impl CustomOp2 for ZipBackward {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let row = l1.shape().dims().last().copied().unwrap_or(1);
        let (a, b) = (f32_data(s1, l1, self.name)?, f32_data(s2, l2, self.name)?);
        if a.len() != b.len() {
            candle_core::bail!("{}: {} and {} elements", self.name, a.len(), b.len())
        }
        let mut out = vec![0f32; a.len()];
        (self.f)(a, b, row, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
