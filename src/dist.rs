//! Data-parallel training's collectives: one small interface (sum all-reduce, broadcast, barrier)
//! behind which a run is a single process ([`Single`]), one rank of an MPI job (`Mpi`, with the
//! `mpi` feature, when the process was launched by `mpirun`/`srun`), or one GPU of an NCCL job
//! (`Nccl`, with the `nccl` feature, when launched `torchrun`-style with `RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR` and `MASTER_PORT`; see [`rendezvous`]).
//!
//! Every rank runs the same training loop on its own slice of the data; after each backward pass the
//! gradients are summed over the ranks and averaged, so every rank takes the same optimizer step and
//! the weights stay identical. Rank 0 alone writes files and prints progress.

use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

#[cfg(feature = "nccl")]
mod nccl;
pub mod rendezvous;

/// The collective operations data-parallel training needs. Every rank calls them in the same
/// order; a call returns once all ranks made it.
pub trait Collective {
    /// This process's index, 0..world.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank with the element-wise sum over the ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// As [`Collective::all_reduce_sum`], for the few f64 totals (loss, token counts).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Replaces `buf` on every rank with rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize);
    /// Returns once every rank has called it.
    fn barrier(&self);
    /// Ends every rank of the job (after an error on this one, so the others don't wait forever in
    /// a collective). A single process just returns.
    fn abort(&self, code: i32);
    /// Whether training goes through the collectives: with more than one rank, and with one
    /// where the collective asks for it (NCCL, so that its path can be checked on one GPU).
    fn communicates(&self) -> bool {
        self.world() > 1
    }
    /// Whether this rank writes the run's files and prints its progress.
    fn is_lead(&self) -> bool {
        self.rank() == 0
    }
    /// The device this rank trains on, given the configured one (`train.device`): that one,
    /// except where the collective owns the device (NCCL: cuda:LOCAL_RANK).
    fn device(&self, requested: DeviceChoice) -> Result<Device> {
        requested.open()
    }
    /// The element-wise sum over the ranks of a tensor (the flattened gradients), as f32 on the
    /// tensor's device. By default through host memory and [`Collective::all_reduce_sum`]; NCCL
    /// sums on the GPUs.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut v);
        Ok(Tensor::from_vec(v, t.shape(), t.device())?)
    }
}

/// One process: world 1, every operation a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [f32], _: usize) {}
    fn barrier(&self) {}
    fn abort(&self, _: i32) {}
}

/// Whether an MPI launcher (Open MPI's mpirun, MPICH's hydra, a PMIx launcher such as srun) started
/// this process, and the world size it announced (0 when it names none).
pub fn launcher_world() -> Option<usize> {
    let var = |k: &str| std::env::var(k).ok()?.parse().ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| std::env::var_os("PMIX_RANK").map(|_| 0))
}

/// The collective of this process: MPI when built with the `mpi` feature and launched by an MPI
/// launcher; NCCL when built with the `nccl` feature and launched `torchrun`-style (`RANK` and
/// `WORLD_SIZE` set); else [`Single`]. Call it once, early (it initialises
/// MPI or joins the NCCL job), and keep the value until the end of the program (dropping it
/// finalises MPI).
pub fn init() -> Result<Box<dyn Collective>> {
    if let Some(world) = launcher_world() {
        return init_mpi(world);
    }
    // A one-rank launch is a single process, except that a build with NCCL goes through it
    // all the same (so that the NCCL path can be checked on one GPU).
    match rendezvous::LaunchEnv::from_env()? {
        Some(env) if env.world > 1 || cfg!(feature = "nccl") => init_nccl(env),
        _ => Ok(Box::new(Single)),
    }
}

fn init_mpi(world: usize) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    {
        let _ = world;
        Ok(Box::new(mpi_impl::Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if world > 1 {
            return Err(Error::Config(format!(
                "launched as one of {world} MPI processes, but this chatforge was built without MPI \
                 (cargo build --release --features mpi); refusing to run {world} independent copies \
                 of the same run"
            )));
        }
        Ok(Box::new(Single))
    }
}

fn init_nccl(env: rendezvous::LaunchEnv) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "nccl")]
    {
        Ok(Box::new(nccl::Nccl::init(env)?))
    }
    #[cfg(not(feature = "nccl"))]
    {
        Err(Error::Config(format!(
            "launched as rank {} of {} (RANK, WORLD_SIZE), but this chatforge was built without \
             NCCL (cargo build --release --features nccl); refusing to run {} independent copies \
             of the same run",
            env.rank, env.world, env.world
        )))
    }
}

/// Fails unless `world` is the world size a checkpoint was written with (the data each rank reads
/// and the gradient average depend on it).
pub fn check_same_world(saved: usize, world: usize) -> Result<()> {
    if saved == world {
        return Ok(());
    }
    Err(Error::Config(format!(
        "this checkpoint was written by a run of {saved} process(es) but this one has {world}; \
         resume with the same world size (mpirun -n {saved}){}",
        if saved == 1 {
            ", or without mpirun"
        } else {
            ""
        }
    )))
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    use super::Collective;
    use crate::error::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    /// Elements per MPI call (counts are C ints).
    const CHUNK: usize = 1 << 28;

    /// A rank of the MPI job; holds MPI open until dropped.
    pub struct Mpi {
        world: SimpleCommunicator,
        // Dropped last (fields drop in declaration order): MPI_Finalize.
        _universe: mpi::environment::Universe,
    }

    impl Mpi {
        pub fn init() -> Result<Self> {
            // Only the main thread calls MPI (candle's worker threads never do).
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or_else(|| Error::Config("MPI was already initialised".into()))?;
            Ok(Mpi {
                world: universe.world(),
                _universe: universe,
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            for c in buf.chunks_mut(CHUNK) {
                let send = c.to_vec();
                self.world
                    .all_reduce_into(&send[..], c, SystemOperation::sum());
            }
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
            for c in buf.chunks_mut(CHUNK) {
                let send = c.to_vec();
                self.world
                    .all_reduce_into(&send[..], c, SystemOperation::sum());
            }
        }
        fn broadcast(&self, buf: &mut [f32], root: usize) {
            let root = self.world.process_at_rank(root as i32);
            for c in buf.chunks_mut(CHUNK) {
                root.broadcast_into(c);
            }
        }
        fn barrier(&self) {
            self.world.barrier();
        }
        fn abort(&self, code: i32) {
            if self.world.size() > 1 {
                self.world.abort(code);
            }
        }
    }
}
