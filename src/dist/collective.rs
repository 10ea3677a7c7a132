//! The operations ranks do together, behind one trait so the trainer does
//! not care which library carries them: MPI between CPU and emulator ranks
//! (`--features mpi`, `dist::mpi`), NCCL between GPUs (`dist::device`).
//! Nothing here is a collective of our own.

use crate::error::Result;

pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// The largest of the ranks' values (a stop flag, a step count).
    fn all_reduce_max(&self, value: u64) -> Result<u64>;
    /// Waits until every rank has come here.
    fn barrier(&self) -> Result<()>;
}
