//! The world from the launcher's environment, and a rank's shard of a step.

use crate::error::{Error, Result};

/// Who started the processes, as read from their environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun (or anything that sets its variables).
    Torchrun,
    /// `nemesis pretrain --nproc-per-node N` on GPUs: torchrun's variables,
    /// set by nemesis itself (with `NEMESIS_LOCAL_RANKS=1`).
    Local,
    OpenMpi,
    /// MPICH, Intel MPI and other PMI launchers.
    Pmi,
    /// SLURM's `srun`.
    Slurm,
    /// No launcher: one process.
    Single,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Local => "nemesis --nproc-per-node",
            Launcher::OpenMpi => "Open MPI (mpirun)",
            Launcher::Pmi => "MPICH/PMI (mpiexec)",
            Launcher::Slurm => "SLURM (srun)",
            Launcher::Single => "none (one process)",
        }
    }
}

/// This process's place among the ranks of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub launcher: Launcher,
    pub rank: usize,
    pub size: usize,
    /// The rank among those of its machine: which GPU it takes.
    pub local_rank: usize,
    /// Where rank 0 listens for the others (torchrun's MASTER_ADDR:MASTER_PORT).
    pub master: Option<(String, u16)>,
    /// torchrun's agent holds MASTER_PORT itself (`TORCHELASTIC_USE_AGENT_STORE=True`).
    pub agent_store: bool,
}

impl World {
    pub fn single() -> World {
        World {
            launcher: Launcher::Single,
            rank: 0,
            size: 1,
            local_rank: 0,
            master: None,
            agent_store: false,
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<World> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From the variables `get` gives, trying each launcher's in turn:
    /// torchrun's, Open MPI's, MPICH/PMI's, SLURM's; else one process.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<World> {
        // (launcher, rank, size, local rank; None: derive from the size)
        let sets: [(Launcher, &str, &str, Option<&str>); 4] = [
            (Launcher::Torchrun, "RANK", "WORLD_SIZE", Some("LOCAL_RANK")),
            (
                Launcher::OpenMpi,
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                Some("OMPI_COMM_WORLD_LOCAL_RANK"),
            ),
            (Launcher::Pmi, "PMI_RANK", "PMI_SIZE", Some("MPI_LOCALRANKID")),
            (Launcher::Slurm, "SLURM_PROCID", "SLURM_NTASKS", Some("SLURM_LOCALID")),
        ];
        for (launcher, rank_key, size_key, local_key) in sets {
            let (Some(rank), Some(size)) = (get(rank_key), get(size_key)) else {
                continue;
            };
            let number = |key: &str, v: &str| -> Result<usize> {
                v.trim().parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "launcher",
                        format!("{key}={v:?} (set by {}) is not a number", launcher.name()),
                    )
                })
            };
            let (rank, size) = (number(rank_key, &rank)?, number(size_key, &size)?);
            if size == 0 || rank >= size {
                return Err(Error::invalid(
                    "launcher",
                    format!("{rank_key}={rank} with {size_key}={size}: a rank must lie in 0..{size}"),
                ));
            }
            let local_rank = match local_key.and_then(|k| get(k).map(|v| (k, v))) {
                Some((k, v)) => number(k, &v)?,
                // PMI launchers that do not say: ranks fill machines in order.
                None => 0,
            };
            let master = match (get("MASTER_ADDR"), get("MASTER_PORT")) {
                (Some(addr), Some(port)) => Some((
                    addr,
                    port.trim().parse::<u16>().map_err(|_| {
                        Error::invalid("launcher", format!("MASTER_PORT={port:?} is not a port number"))
                    })?,
                )),
                _ => None,
            };
            let launcher = match launcher {
                Launcher::Torchrun if get("NEMESIS_LOCAL_RANKS").as_deref() == Some("1") => Launcher::Local,
                l => l,
            };
            return Ok(World {
                launcher,
                rank,
                size,
                local_rank,
                master,
                agent_store: get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            });
        }
        Ok(World::single())
    }

    pub fn shard(&self) -> Shard {
        Shard {
            rank: self.rank,
            world: self.size,
        }
    }

    /// "rank 1 of 4 (local rank 1), launched by torchrun".
    pub fn describe(&self) -> String {
        if self.size == 1 && self.launcher == Launcher::Single {
            return "one process (no launcher found)".into();
        }
        format!(
            "rank {} of {} (local rank {}), launched by {}",
            self.rank,
            self.size,
            self.local_rank,
            self.launcher.name()
        )
    }
}

/// A rank's share of every step: global micro-batch `j`
/// (0 ≤ j < accum × world) goes to rank `j mod world` as its micro-batch
/// `j div world`, so W ranks together draw exactly the batches of one rank
/// with `accum × W`, and every random draw keyed by `j` is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

impl Shard {
    /// The global micro-batch index of this rank's micro-batch `micro`.
    pub fn global_micro(&self, micro: usize) -> usize {
        micro * self.world + self.rank
    }

    /// The global batch (counted from the step's first) of this rank's
    /// `n`-th batch.
    pub fn global_batch(&self, n: u64) -> u64 {
        n * self.world as u64 + self.rank as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn each_launcher_is_read_in_order() {
        assert_eq!(world(&[]).unwrap(), World::single());
        let t = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
            // torchrun's variables come first even under SLURM.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!(
            (t.launcher, t.rank, t.size, t.local_rank),
            (Launcher::Torchrun, 3, 8, 3)
        );
        assert_eq!(t.master, Some(("node1".into(), 29500)));
        assert!(!t.agent_store);
        let torchrun = [
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ];
        assert!(world(&torchrun).unwrap().agent_store);
        // The ranks `--nproc-per-node` starts on GPUs say so.
        let local = world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("NEMESIS_LOCAL_RANKS", "1")]).unwrap();
        assert_eq!(local.launcher, Launcher::Local);
        assert!(local.describe().contains("launched by nemesis --nproc-per-node"));
        let o = world(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!((o.launcher, o.rank, o.size, o.local_rank), (Launcher::OpenMpi, 1, 2, 1));
        let p = world(&[("PMI_RANK", "2"), ("PMI_SIZE", "4")]).unwrap();
        assert_eq!((p.launcher, p.rank, p.size, p.local_rank), (Launcher::Pmi, 2, 4, 0));
        let s = world(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "1")]).unwrap();
        assert_eq!((s.launcher, s.rank, s.size, s.local_rank), (Launcher::Slurm, 5, 16, 1));
        assert!(s.describe().contains("rank 5 of 16 (local rank 1), launched by SLURM"));
    }

    #[test]
    fn nonsense_from_a_launcher_is_a_clear_error() {
        let e = world(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK=2") && e.contains("0..2"), "{e}");
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK=\"x\"") && e.contains("torchrun"), "{e}");
        let e = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "99999"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn the_ranks_shards_tile_the_global_micro_batches() {
        for world in 1..=4 {
            for accum in 1..=3 {
                let mut seen: Vec<usize> = (0..world)
                    .flat_map(|rank| (0..accum).map(move |m| Shard { rank, world }.global_micro(m)))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..accum * world).collect::<Vec<_>>());
            }
        }
    }
}
