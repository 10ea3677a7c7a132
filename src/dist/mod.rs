//! Data-parallel training (docs/DESIGN.md, "Data-parallel training"): which rank of
//! how many this process is, as the launcher says, and how a rank's share
//! of each step is drawn. A leaf: the loader and the step use `Shard`, the
//! CLI uses `World`. The collectives themselves (NCCL between GPUs, MPI
//! between CPU ranks) are not built yet; until they are, `pretrain` refuses
//! a world of more than one rank.

mod world;

pub use world::{Launcher, Shard, World};
