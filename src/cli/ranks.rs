//! The ranks of a data-parallel `pretrain` (docs/DESIGN.md, "Data-parallel
//! training"): how this process joins the others (MPI between CPU and
//! emulator ranks, NCCL between GPUs, its unique id over MPI or the TCP
//! rendezvous), and `--nproc-per-node N`, which starts N ranks on this
//! machine: GPU ranks as torchrun would (its variables, a rendezvous on a
//! free local port), CPU and emulator ranks through mpirun.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::DeviceArg;
use crate::backend::cuda::nccl;
use crate::backend::cuda_probe::{probe, CudaProbe};
use crate::device::{Device, Peers, SharedDevice};
use crate::dist::{rendezvous, Collective, DeviceCollective, Launcher, World};
use crate::error::{Error, Result};

type SharedCollective = Arc<dyn Collective>;

/// This process among the ranks of a run: the collective that joins them
/// (none for one process) and whether it is rank 0, the one that writes.
pub struct Ranks {
    pub col: Option<Arc<dyn Collective>>,
    pub writer: bool,
    /// MPI, kept initialised for the run when it only carried NCCL's id.
    _mpi: Option<SharedCollective>,
}

impl Ranks {
    /// One process alone.
    pub fn single() -> Ranks {
        Ranks {
            col: None,
            writer: true,
            _mpi: None,
        }
    }

    /// Joins the other ranks of `world`. GPU ranks join through NCCL
    /// whenever a launcher started them (even one rank: so a one-GPU run
    /// under a launcher takes the path a cluster run takes); CPU and
    /// emulator ranks through MPI when there are several.
    pub fn open(world: &World, device: Option<&SharedDevice>, timeout: Duration) -> Result<Ranks> {
        let gpu = device.is_some_and(|d| d.kind() == Device::Cuda);
        if world.launcher == Launcher::Single || (world.size <= 1 && !gpu) {
            return Ok(Ranks::single());
        }
        let writer = world.rank == 0;
        if let (true, Some(dev)) = (gpu, device) {
            let (id, mpi) = nccl_id(world, timeout)?;
            dev.join(Peers::Nccl {
                id,
                rank: world.rank,
                size: world.size,
            })?;
            let col: Arc<dyn Collective> = Arc::new(DeviceCollective::new(dev.clone(), world.rank, world.size));
            return Ok(Ranks {
                col: Some(col),
                writer,
                _mpi: mpi,
            });
        }
        if matches!(world.launcher, Launcher::Torchrun | Launcher::Local) {
            return Err(Error::invalid(
                "pretrain",
                "ranks started by torchrun are GPU ranks, joined by NCCL (--device cuda); CPU and emulator \
                 ranks join over MPI: start them with mpirun (or --nproc-per-node with --device cpu or emu)",
            ));
        }
        #[cfg(feature = "mpi")]
        {
            let m = mpi_world(world)?;
            if let Some(dev) = device {
                dev.join(Peers::Host(m.clone()))?;
            }
            Ok(Ranks {
                col: Some(m),
                writer,
                _mpi: None,
            })
        }
        #[cfg(not(feature = "mpi"))]
        Err(without_mpi(world))
    }

    /// Every rank learns whether any failed: a rank that failed returns its
    /// error, the others one that points to it, so no rank waits forever
    /// for one that has given up.
    pub fn agree<T>(&self, r: Result<T>) -> Result<T> {
        let Some(col) = &self.col else { return r };
        let failed = col.all_reduce_max(u64::from(r.is_err()))? > 0;
        match r {
            Ok(_) if failed => Err(Error::invalid(
                "pretrain",
                "another rank failed before training (its message says why)",
            )),
            r => r,
        }
    }

    /// `f` on rank 0 first (preparing data, say), then on the others, which
    /// find its work done.
    pub fn first_then_others<T>(&self, f: impl Fn() -> Result<T>) -> Result<T> {
        if self.writer {
            let r = f();
            self.agree(r)
        } else {
            self.agree(Ok(()))?;
            f()
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn without_mpi(world: &World) -> Error {
    Error::invalid(
        "pretrain",
        format!(
            "this process is {}; CPU and emulator ranks join over MPI, which this build lacks: cargo build \
             --release --features mpi (needs Open MPI or MPICH, and libclang)",
            world.describe()
        ),
    )
}

/// MPI's world, checked against the launcher's variables.
#[cfg(feature = "mpi")]
fn mpi_world(world: &World) -> Result<Arc<crate::dist::Mpi>> {
    let m = crate::dist::Mpi::init()?;
    if m.size() != world.size || m.rank() != world.rank {
        return Err(Error::invalid(
            "pretrain",
            format!(
                "MPI says rank {} of {}, the launcher's variables {}",
                m.rank(),
                m.size(),
                world.describe()
            ),
        ));
    }
    Ok(Arc::new(m))
}

/// The NCCL unique id of this run: rank 0 makes it; it reaches the others
/// over MPI when an MPI launcher started them and this build has MPI, else
/// over the TCP rendezvous at MASTER_ADDR:MASTER_PORT.
fn nccl_id(world: &World, timeout: Duration) -> Result<([u8; 128], Option<SharedCollective>)> {
    // Every rank loads NCCL first, so a machine without it says so at once
    // rather than leaving the others waiting at the rendezvous.
    let which = nccl::describe()?;
    if world.rank == 0 {
        eprintln!("{which}");
    }
    let mine = if world.rank == 0 { nccl::unique_id()? } else { [0; 128] };
    let mpi_launched = matches!(world.launcher, Launcher::OpenMpi | Launcher::Pmi | Launcher::Slurm);
    if world.size == 1 {
        return Ok((mine, None));
    }
    match &world.master {
        Some((addr, port)) if !(mpi_launched && cfg!(feature = "mpi")) => {
            let port = rendezvous::port_for(*port, world.agent_store)?;
            if world.rank == 0 {
                rendezvous::serve(port, world.size, &mine, timeout)?;
                Ok((mine, None))
            } else {
                Ok((rendezvous::join(addr, port, world.rank, world.size, timeout)?, None))
            }
        }
        _ if mpi_launched => {
            #[cfg(feature = "mpi")]
            {
                let m = mpi_world(world)?;
                let mut id = mine;
                m.broadcast(&mut id, 0)?;
                Ok((id, Some(m as SharedCollective)))
            }
            #[cfg(not(feature = "mpi"))]
            Err(Error::invalid(
                "pretrain",
                format!(
                    "{}: the GPU ranks need MASTER_ADDR and MASTER_PORT (rank 0's host and a free port) to \
                     find each other, or a build with --features mpi",
                    world.describe()
                ),
            ))
        }
        _ => Err(Error::invalid(
            "pretrain",
            format!("{}: MASTER_ADDR and MASTER_PORT are not set", world.describe()),
        )),
    }
}

/// The GPU a rank takes: its local rank's, or the one GPU it sees when the
/// launcher gave each rank its own (`CUDA_VISIBLE_DEVICES` per task).
pub fn gpu_of(world: &World) -> Result<usize> {
    match probe() {
        CudaProbe::Gpus(n) if (world.local_rank as u64) < n as u64 => Ok(world.local_rank),
        CudaProbe::Gpus(1) => Ok(0),
        CudaProbe::Gpus(n) => Err(Error::invalid(
            "--device cuda",
            format!(
                "{} takes GPU {}; this machine shows {n}",
                world.describe(),
                world.local_rank
            ),
        )),
        // `select` says why CUDA is unusable.
        _ => Ok(0),
    }
}

/// `--nproc-per-node N`: this command again on N ranks of this machine; the
/// exit status is the run's. GPU ranks (`--device cuda`, or `auto` on a
/// machine with GPUs) are started as torchrun would; CPU and emulator ranks
/// through mpirun.
pub fn start_local_ranks(n: usize, device: DeviceArg, timeout: Duration) -> Result<u8> {
    if n == 0 {
        return Err(Error::invalid("--nproc-per-node", "must be at least 1"));
    }
    let gpus = match device {
        DeviceArg::Cuda => true,
        DeviceArg::Auto => matches!(probe(), CudaProbe::Gpus(g) if g > 0),
        DeviceArg::Cpu | DeviceArg::Emu => false,
    };
    let me = std::env::current_exe().map_err(|e| Error::invalid("--nproc-per-node", e.to_string()))?;
    let args = args_without_nproc();
    if gpus {
        start_gpu_ranks(n, &me, &args, timeout)
    } else {
        start_mpi_ranks(n, &me, &args)
    }
}

/// Every argument but `--nproc-per-node` and its value.
fn args_without_nproc() -> Vec<OsString> {
    let mut args = Vec::new();
    let mut skip = false;
    for arg in std::env::args_os().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        let s = arg.to_string_lossy();
        if s == "--nproc-per-node" {
            skip = true;
            continue;
        }
        if s.starts_with("--nproc-per-node=") {
            continue;
        }
        args.push(arg);
    }
    args
}

fn status_of(s: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// Through mpirun, which forwards Ctrl-C and SIGTERM to every rank and
/// stops them all if one dies.
fn start_mpi_ranks(n: usize, me: &std::path::Path, args: &[OsString]) -> Result<u8> {
    if !cfg!(feature = "mpi") {
        return Err(Error::invalid(
            "--nproc-per-node",
            "CPU and emulator ranks join over MPI, which this build lacks: cargo build --release --features mpi",
        ));
    }
    let mut cmd = Command::new("mpirun");
    // Open MPI refuses root unless told; more ranks than cores are fine.
    // SAFETY: geteuid only reads the process's user id.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-np", &n.to_string()]).arg(me).args(args);
    eprintln!("starting {n} ranks on this machine through mpirun");
    let status = cmd.status().map_err(|e| {
        Error::invalid(
            "--nproc-per-node",
            format!("cannot start mpirun ({e}); install Open MPI (Debian: openmpi-bin)"),
        )
    })?;
    Ok(status_of(status))
}

/// As torchrun's standalone mode does: N children with its variables and a
/// rendezvous on a free port of this machine. Each child is its own
/// process group, so a Ctrl-C reaches it once, forwarded from here; when
/// one rank fails, the others get `timeout` to end on their own (they stop
/// at their next collective) and are then killed.
fn start_gpu_ranks(n: usize, me: &std::path::Path, args: &[OsString], timeout: Duration) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::invalid("--nproc-per-node", format!("no free local port: {e}")))?
        .port();
    let received = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, received.clone(), sig as usize)
            .map_err(|e| Error::invalid("--nproc-per-node", format!("cannot handle signal {sig}: {e}")))?;
    }
    eprintln!("starting {n} GPU ranks on this machine (rendezvous at 127.0.0.1:{port})");
    let mut children: Vec<Option<Child>> = Vec::new();
    for r in 0..n {
        let child = Command::new(me)
            .args(args)
            .env("RANK", r.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("NEMESIS_LOCAL_RANKS", "1")
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .process_group(0)
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                kill_all(&mut children, libc::SIGKILL);
                return Err(Error::invalid("--nproc-per-node", format!("starting rank {r}: {e}")));
            }
        }
    }
    let mut status: Option<u8> = None;
    let mut failed_at: Option<Instant> = None;
    let mut forwarded = 0usize;
    loop {
        let sig = received.swap(0, Ordering::SeqCst);
        if sig != 0 {
            forwarded += 1;
            kill_all(&mut children, sig as i32);
        }
        for (r, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Ok(Some(s)) = c.try_wait() {
                let code = status_of(s);
                if code != 0 && status.is_none_or(|st| st == 0) {
                    if forwarded == 0 {
                        eprintln!(
                            "rank {r} ended with status {code}; the others get {} s to stop",
                            timeout.as_secs()
                        );
                    }
                    status = Some(code);
                    failed_at.get_or_insert_with(Instant::now);
                } else if status.is_none() {
                    status = Some(code);
                }
                *slot = None;
            }
        }
        if children.iter().all(Option::is_none) {
            return Ok(status.unwrap_or(0));
        }
        if failed_at.is_some_and(|t| t.elapsed() > timeout) {
            eprintln!("stopping the ranks still running");
            kill_all(&mut children, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_all(children: &mut [Option<Child>], sig: i32) {
    for c in children.iter().flatten() {
        // SAFETY: signals a child of ours that has not been waited for.
        unsafe { libc::kill(c.id() as i32, sig) };
    }
}
