//! Data-parallel training (docs/DESIGN.md, "Data-parallel training"): which rank of
//! how many this process is, as the launcher says, and how a rank's share
//! of each step is drawn. A leaf: the loader and the step use `Shard`, the
//! CLI uses `World`. Ranks sum their gradients through a `Collective`:
//! MPI between CPU and emulator ranks (`--features mpi`); NCCL between GPUs
//! is not built yet.

mod collective;
#[cfg(feature = "mpi")]
mod mpi;
mod world;

pub use collective::Collective;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use world::{Launcher, Shard, World};
