//! MPI between ranks (`--features mpi`): Open MPI or MPICH through the
//! `mpi` crate. Started by `mpirun`/`mpiexec`/`srun`, which set the
//! variables `World::from_env` reads.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::collective::Collective;
use crate::device::{HostReduce, Reduce};
use crate::error::{Error, Result};

pub struct Mpi {
    // The world communicator must not outlive MPI: kept beside the universe,
    // which finalizes MPI when dropped.
    world: SimpleCommunicator,
    _universe: Universe,
}

// SAFETY: every call goes through `&self` from the one training thread
// (MPI is initialised without thread support beyond that: MPI_THREAD_SINGLE
// or more); the loader threads never touch it.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        let universe = mpi::initialize().ok_or_else(|| Error::invalid("mpi", "MPI was initialised already"))?;
        let world = universe.world();
        Ok(Mpi {
            world,
            _universe: universe,
        })
    }
}

impl Mpi {
    /// Rank `root`'s bytes to every rank (the NCCL unique id, say).
    pub fn broadcast(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(bytes);
        Ok(())
    }
}

/// The emulator's ranks sum host copies of their device buffers here.
impl HostReduce for Mpi {
    fn all_reduce_host(&self, values: &mut [u8], op: Reduce) -> Result<()> {
        fn through<T: bytemuck::Pod>(values: &mut [u8], f: impl FnOnce(&mut [T]) -> Result<()>) -> Result<()> {
            let mut v: Vec<T> = bytemuck::pod_collect_to_vec(values);
            f(&mut v)?;
            values.copy_from_slice(bytemuck::cast_slice(&v));
            Ok(())
        }
        if values.len() % op.elem_bytes() != 0 {
            return Err(Error::invalid("mpi", "an all-reduce of partial elements"));
        }
        match op {
            Reduce::SumF32 => through::<f32>(values, |v| self.all_reduce_sum(v)),
            Reduce::SumF64 => through::<f64>(values, |v| self.all_reduce_sum_f64(v)),
            Reduce::MaxU64 => through::<u64>(values, |v| {
                let send = v.to_vec();
                self.world.all_reduce_into(&send[..], v, SystemOperation::max());
                Ok(())
            }),
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_max(&self, value: u64) -> Result<u64> {
        let mut out = 0u64;
        self.world.all_reduce_into(&value, &mut out, SystemOperation::max());
        Ok(out)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
