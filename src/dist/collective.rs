//! The operations ranks do together, behind one trait so the trainer does
//! not care which library carries them: MPI between CPU and emulator ranks
//! (`--features mpi`, `dist::mpi`), NCCL between GPUs (`dist::device`).
//! Nothing here is a collective of our own.

use std::time::Duration;

use crate::error::Result;

pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// How long a collective waits for the other ranks before it stops
    /// the run with an error naming them (`None`: for ever, as while rank
    /// 0 prepares the data before training).
    fn set_timeout(&self, _timeout: Option<Duration>) {}
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// The step the collectives that follow belong to, for messages.
    fn at_step(&self, _step: u64) {}
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// The largest of the ranks' values (a stop flag, a step count).
    fn all_reduce_max(&self, value: u64) -> Result<u64>;
    /// Waits until every rank has come here.
    fn barrier(&self) -> Result<()>;
}
