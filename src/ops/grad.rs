//! Attaching a backward pass to a value computed outside candle's graph (candle's fused softmax
//! kernel has none of its own).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Storage, Tensor};
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
