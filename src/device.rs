//! Which device a command runs on, and opening it (a GPU's memory pool set to keep freed memory).

use crate::error::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device as the command line and `train.device` name it: `cpu`, `cuda` (the first GPU, or a
/// data-parallel rank's own), `cuda:N` or `auto` (CUDA when built with the `cuda` feature and a
/// GPU is present, else CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// `cuda` (None) or `cuda:N`.
    Cuda(Option<usize>),
    Auto,
}

impl DeviceChoice {
    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => match Device::cuda_if_available(0) {
                Ok(d @ Device::Cuda(_)) => {
                    keep_freed_memory(&d)?;
                    Ok(d)
                }
                _ => Ok(Device::Cpu),
            },
            DeviceChoice::Cuda(n) => cuda_device(n.unwrap_or(0)),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "auto" => Ok(DeviceChoice::Auto),
            "cuda" => Ok(DeviceChoice::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(Some(n))),
                Some(Err(_)) => Err(format!("'{s}': expected cuda:N with N a GPU index")),
                None => Err(format!("'{s}': expected cpu, cuda, cuda:N or auto")),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e| format!("train.device {e}"))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cuda(None) => f.write_str("cuda"),
            DeviceChoice::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// GPU `n`, with its memory pool told to keep freed memory for reuse.
///
/// candle allocates from CUDA's stream-ordered pool (`cuMemAllocAsync`), whose default release
/// threshold of 0 hands every freed block back to the driver at the next synchronization; a training
/// step synchronizes several times (the loss, the gradient norm), so each step would map its
/// activations' gigabytes afresh. PyTorch's caching allocator keeps them; so does this.
pub fn cuda_device(n: usize) -> Result<Device> {
    let device = Device::new_cuda(n)?;
    keep_freed_memory(&device)?;
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn keep_freed_memory(_: &Device) -> Result<()> {
    Ok(())
}

#[cfg(feature = "cuda")]
fn keep_freed_memory(device: &Device) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let candle_core::Device::Cuda(cuda) = device else {
        return Ok(());
    };
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let err = |e: result::DriverError| {
        crate::Error::Device(format!("CUDA memory pool of GPU {}: {e}", ctx.ordinal()))
    };
    ctx.bind_to_thread().map_err(err)?;
    let mut threshold = u64::MAX;
    // SAFETY: the device is the context's; the attribute takes a u64, which `threshold` is.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device()).map_err(err)?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(err)?;
    }
    Ok(())
}
