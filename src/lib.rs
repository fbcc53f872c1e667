//! chatforge: build your own ChatGPT. Train a BPE tokenizer, turn corpora into token shards,
//! pre-train a GPT, and evaluate it — one library behind one command-line program.

pub mod chat;
pub mod chat_template;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod formats;
pub mod fsutil;
pub mod infer;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod progress;
pub mod serve;
pub mod speedrun;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// The device named on the command line: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when built with the
/// `cuda` feature and a GPU is present, else CPU).
pub fn device(name: &str) -> Result<candle_core::Device> {
    use candle_core::Device;
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => match Device::cuda_if_available(0) {
            Ok(d @ Device::Cuda(_)) => {
                keep_freed_memory(&d)?;
                Ok(d)
            }
            _ => Ok(Device::Cpu),
        },
        "cuda" => cuda_device(0),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().map_err(|_| {
                Error::Config(format!(
                    "--device '{s}': expected cuda:N with N a GPU index"
                ))
            })?;
            cuda_device(n)
        }
        s => Err(Error::Config(format!(
            "--device '{s}': expected cpu, cuda, cuda:N or auto"
        ))),
    }
}

/// GPU `n`, with its memory pool told to keep freed memory for reuse.
///
/// candle allocates from CUDA's stream-ordered pool (`cuMemAllocAsync`), whose default release
/// threshold of 0 hands every freed block back to the driver at the next synchronization; a training
/// step synchronizes several times (the loss, the gradient norm), so each step would map its
/// activations' gigabytes afresh. PyTorch's caching allocator keeps them; so does this.
pub fn cuda_device(n: usize) -> Result<candle_core::Device> {
    let device = candle_core::Device::new_cuda(n)?;
    keep_freed_memory(&device)?;
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn keep_freed_memory(_: &candle_core::Device) -> Result<()> {
    Ok(())
}

#[cfg(feature = "cuda")]
fn keep_freed_memory(device: &candle_core::Device) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let candle_core::Device::Cuda(cuda) = device else {
        return Ok(());
    };
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let err = |e: result::DriverError| {
        Error::Config(format!("CUDA memory pool of GPU {}: {e}", ctx.ordinal()))
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
