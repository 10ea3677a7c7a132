//! MPI between ranks (`--features mpi`): Open MPI or MPICH through the
//! `mpi` crate. Started by `mpirun`/`mpiexec`/`srun`, which set the
//! variables `World::from_env` reads.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::collective::Collective;
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
