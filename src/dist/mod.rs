//! Data-parallel training (docs/DESIGN.md, "Data-parallel training"): which rank of
//! how many this process is, as the launcher says, and how a rank's share
//! of each step is drawn. Above the device layer only: the loader and the
//! step use `Shard`, the CLI uses `World`. Ranks do things together through
//! a `Collective`: MPI between CPU and emulator ranks (`--features mpi`),
//! NCCL between GPUs (backend/cuda/nccl.rs, reached through the device),
//! whose unique id travels over MPI or the TCP rendezvous here.

mod collective;
mod device;
#[cfg(feature = "mpi")]
mod mpi;
pub mod rendezvous;
mod world;

pub use collective::Collective;
pub use device::DeviceCollective;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use world::{Launcher, Shard, World};
