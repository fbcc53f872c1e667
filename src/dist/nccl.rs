//! Data-parallel training across GPUs on NCCL (feature `nccl`), through cudarc's bindings: one
//! process per GPU, launched `torchrun`-style (see [`super::rendezvous`]). Rank r trains on
//! cuda:LOCAL_RANK; the gradients are summed on the GPUs, on the stream candle's kernels run on,
//! without a trip through host memory. The few host-side values (the initial weights' broadcast,
//! loss and token totals) go through the GPU for NCCL and back.

use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::rendezvous::LaunchEnv;
use super::Collective;
use crate::device::DeviceChoice;
use crate::error::{Error, Result};

/// How long the ranks wait for each other at start-up (a cluster may start them minutes apart).
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank of an NCCL job.
pub struct Nccl {
    comm: SharedComm,
    stream: std::sync::Arc<CudaStream>,
    device: Device,
    env: LaunchEnv,
}

/// NCCL's communicator, used from the main thread only (candle's CPU workers never call it), so
/// it may be shared with the custom op that runs the all-reduce there.
struct SharedComm(Comm);

// SAFETY: every call on the communicator is made by the thread that runs the training loop, one
// at a time (the ops are enqueued on one CUDA stream); NCCL allows a communicator to be used from
// any thread when calls are not concurrent.
unsafe impl Send for SharedComm {}
// SAFETY: as above.
unsafe impl Sync for SharedComm {}

fn nccl_err(what: &str, e: candle_core::cuda_backend::cudarc::nccl::result::NcclError) -> Error {
    Error::Device(format!("NCCL {what}: {:?}", e.0))
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("CUDA {what}: {e:?}"))
}

impl Nccl {
    /// Joins the job: rank 0 creates NCCL's unique id and hands it to the others
    /// (`LaunchEnv::exchange`), then every rank opens its communicator on cuda:LOCAL_RANK.
    pub fn init(env: LaunchEnv) -> Result<Self> {
        let device = crate::cuda_device(env.local_rank).map_err(|e| {
            Error::Config(format!(
                "rank {}: no GPU cuda:{} (LOCAL_RANK) for NCCL: {e}",
                env.rank, env.local_rank
            ))
        })?;
        let Device::Cuda(cuda) = &device else {
            return Err(Error::Config("NCCL needs a CUDA device".into()));
        };
        let stream = cuda.cuda_stream();
        let id = match env.rank {
            0 => Some(Id::new().map_err(|e| nccl_err("could not create the job's id", e))?),
            _ => None,
        };
        let mine = id.map(|id| id.internal().map(|c| c as u8));
        let bytes = env.exchange(mine.as_ref().map(|b| &b[..]), JOIN_TIMEOUT)?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| Error::Device(format!("NCCL id of {} bytes, not 128", bytes.len())))?;
        let comm = Comm::from_rank(stream.clone(), env.rank, env.world, Id::uninit(internal))
            .map_err(|e| nccl_err("could not join the job", e))?;
        Ok(Nccl {
            comm: SharedComm(comm),
            stream,
            device,
            env,
        })
    }

    /// Sums (or, from `root`, broadcasts) a host buffer through the GPU.
    fn host_op<T>(&self, buf: &mut [T], op: HostOp) -> Result<()>
    where
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::nccl::NcclType,
    {
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = self
            .stream
            .clone_htod(buf)
            .map_err(|e| cuda_err("copy to the GPU", e))?;
        match op {
            HostOp::Sum => self.comm.0.all_reduce_in_place(&mut d, &ReduceOp::Sum),
            HostOp::Broadcast(root) => self.comm.0.broadcast_in_place(&mut d, root as i32),
        }
        .map_err(|e| nccl_err("collective", e))?;
        self.stream
            .memcpy_dtoh(&d, buf)
            .map_err(|e| cuda_err("copy from the GPU", e))
    }

    /// Ends the job after a failed collective: the other ranks would wait for this one forever.
    fn fail(&self, e: Error) -> ! {
        eprintln!("error (rank {}): {e}", self.env.rank);
        std::process::exit(1)
    }
}

enum HostOp {
    Sum,
    Broadcast(usize),
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.env.rank
    }
    fn world(&self) -> usize {
        self.env.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        if let Err(e) = self.host_op(buf, HostOp::Sum) {
            self.fail(e)
        }
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        if let Err(e) = self.host_op(buf, HostOp::Sum) {
            self.fail(e)
        }
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) {
        if let Err(e) = self.host_op(buf, HostOp::Broadcast(root)) {
            self.fail(e)
        }
    }
    fn barrier(&self) {
        // NCCL has no barrier: a one-value all-reduce that every rank waits for.
        self.all_reduce_sum(&mut [0f32]);
    }
    fn communicates(&self) -> bool {
        true
    }
    fn abort(&self, code: i32) {
        // torchrun (or whatever started the ranks) ends the others when one exits non-zero.
        std::process::exit(code)
    }
    fn device(&self, requested: DeviceChoice) -> Result<Device> {
        let own = self.env.local_rank;
        match requested {
            DeviceChoice::Cuda(None) | DeviceChoice::Auto => Ok(self.device.clone()),
            DeviceChoice::Cuda(Some(n)) if n == own => Ok(self.device.clone()),
            DeviceChoice::Cpu => Err(Error::Config(
                "train.device 'cpu': NCCL ranks train on GPUs; run CPU processes under mpirun \
                 (chatforge built with --features mpi)"
                    .into(),
            )),
            r => Err(Error::Config(format!(
                "train.device '{r}': each NCCL rank trains on its own GPU, here cuda:{own} \
                 (LOCAL_RANK); set train.device to cuda or auto"
            ))),
        }
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().same_device(&self.device) {
            return Err(Error::Device(format!(
                "NCCL all-reduce of a tensor on {:?}, not on this rank's GPU",
                t.device().location()
            )));
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        Ok(t.apply_op1_no_bwd(&AllReduce(&self.comm))?)
    }
}

/// The sum over the ranks of an f32 CUDA tensor, into a new one (NCCL on candle's stream).
struct AllReduce<'a>(&'a SharedComm);

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce: the tensor is on the CPU, not on the GPU")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce: the tensor must be contiguous")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = s.device().clone();
        // SAFETY: NCCL writes every element before anything reads them.
        let mut dst = unsafe { dev.alloc::<f32>(b - a) }?;
        self.0
             .0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {:?}", e.0)))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
