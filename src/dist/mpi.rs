//! MPI between ranks (`--features mpi`): Open MPI or MPICH through the
//! `mpi` crate. Started by `mpirun`/`mpiexec`/`srun`, which set the
//! variables `World::from_env` reads.
//!
//! Every reduction is MPI's own, started without blocking and then waited
//! for, so that a rank that stops answering (hung, stopped, on a dead
//! machine) is noticed: past the timeout the waiting rank asks every other
//! rank, with a point-to-point message, whether it is waiting at the same
//! collective. Ranks that are waiting answer at once (they keep watching for such
//! questions while they wait); those that do not are named in the error,
//! and the job is aborted through MPI (which stops every rank, the silent
//! one too). A rank that dies outright is seen by mpirun itself, which
//! ends the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::point_to_point::Status;
use mpi::request::StaticScope;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Tag;

use super::collective::Collective;
use crate::device::{HostReduce, Reduce};
use crate::error::{Error, Result};

/// "Are you waiting at collective k?" and its answer, "I am at k".
const QUERY: Tag = 0x4e51;
const ANSWER: Tag = 0x4e52;

pub struct Mpi {
    // The world communicator must not outlive MPI: kept beside the universe,
    // which finalizes MPI when dropped.
    world: SimpleCommunicator,
    /// How long a collective waits for the others; `None`: for ever.
    timeout: Mutex<Option<Duration>>,
    /// Collectives begun so far: every rank calls them in the same order,
    /// so the count says where a rank is.
    begun: AtomicU64,
    /// The training step under way (0: before training).
    step: AtomicU64,
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
            timeout: Mutex::new(None),
            begun: AtomicU64::new(0),
            step: AtomicU64::new(0),
            _universe: universe,
        })
    }

    /// Rank `root`'s bytes to every rank (the NCCL unique id, say).
    pub fn broadcast(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(bytes);
        Ok(())
    }

    fn timeout_now(&self) -> Option<Duration> {
        self.timeout.lock().map(|t| *t).unwrap_or(None)
    }

    /// MPI's all-reduce of `values`, waited for within the timeout.
    fn all_reduce<T: Equivalence + Copy>(&self, values: &mut [T], op: SystemOperation) -> Result<()> {
        let k = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let timeout = self.timeout_now();
        let send = values.to_vec();
        mpi::request::scope(|scope| {
            let mut req = self.world.immediate_all_reduce_into(scope, &send[..], values, op);
            let start = Instant::now();
            let mut pause = Duration::from_micros(5);
            loop {
                match req.test() {
                    Ok(_) => return Ok(()),
                    Err(r) => req = r,
                }
                self.answer_questions(k);
                if let Some(t) = timeout.filter(|&t| start.elapsed() > t) {
                    self.give_up(k, t);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        })
    }

    /// Answers every rank that asked whether this one is at a collective.
    fn answer_questions(&self, k: u64) {
        while let Some((msg, _)) = self.world.any_process().immediate_matched_probe_with_tag(QUERY) {
            let (_their_k, status): (u64, Status) = msg.matched_receive();
            // The asker is waiting for this answer, so the send completes.
            self.world
                .process_at_rank(status.source_rank())
                .send_with_tag(&k, ANSWER);
        }
    }

    /// Past the timeout at collective `k`: asks the others where they are,
    /// names those that do not answer (or answer from elsewhere), and
    /// aborts every rank.
    fn give_up(&self, k: u64, timeout: Duration) -> ! {
        let me = self.world.rank();
        let size = self.world.size();
        for r in (0..size).filter(|&r| r != me) {
            // A send to a silent rank may never complete: its buffer and
            // request are let go of, as the job ends below.
            let buf: &'static u64 = Box::leak(Box::new(k));
            let req = self
                .world
                .process_at_rank(r)
                .immediate_send_with_tag(StaticScope, buf, QUERY);
            std::mem::forget(req);
        }
        let mut answers: Vec<Option<u64>> = vec![None; size as usize];
        answers[me as usize] = Some(k);
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(3) && answers.iter().any(Option::is_none) {
            self.answer_questions(k);
            while let Some((msg, _)) = self.world.any_process().immediate_matched_probe_with_tag(ANSWER) {
                let (theirs, status): (u64, Status) = msg.matched_receive();
                answers[status.source_rank() as usize] = Some(theirs);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let silent: Vec<String> = (0..size as usize)
            .filter(|&r| answers[r].is_none())
            .map(|r| r.to_string())
            .collect();
        let elsewhere: Vec<String> = (0..size as usize)
            .filter_map(|r| {
                answers[r]
                    .filter(|&a| a != k)
                    .map(|a| format!("rank {r} at collective {a}"))
            })
            .collect();
        let mut who = Vec::new();
        if !silent.is_empty() {
            who.push(format!("rank {} does not answer (dead or hung)", silent.join(", ")));
        }
        if !elsewhere.is_empty() {
            who.push(format!("{} (the ranks are out of step)", elsewhere.join(", ")));
        }
        if who.is_empty() {
            who.push("every rank answers, yet the collective does not end".into());
        }
        let step = match self.step.load(Ordering::SeqCst) {
            0 => String::new(),
            s => format!(" in step {s}"),
        };
        eprintln!(
            "error: rank {me} waited {} s (--collective-timeout) at collective {k}{step}: {}; stopping every \
             rank. The last checkpoint is intact: continue with --resume",
            timeout.as_secs(),
            who.join("; ")
        );
        self.world.abort(1)
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
        if !values.len().is_multiple_of(op.elem_bytes()) {
            return Err(Error::invalid("mpi", "an all-reduce of partial elements"));
        }
        match op {
            Reduce::SumF32 => through::<f32>(values, |v| self.all_reduce(v, SystemOperation::sum())),
            Reduce::SumF64 => through::<f64>(values, |v| self.all_reduce(v, SystemOperation::sum())),
            Reduce::MaxU64 => through::<u64>(values, |v| self.all_reduce(v, SystemOperation::max())),
            // MPI has no bf16: the values are widened, summed in f32 and
            // rounded once (as NCCL's sum of two ranks; with more, NCCL
            // rounds each partial sum).
            Reduce::SumBf16 => through::<u16>(values, |v| {
                let mut wide: Vec<f32> = v.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
                self.all_reduce(&mut wide, SystemOperation::sum())?;
                v.iter_mut()
                    .zip(&wide)
                    .for_each(|(b, &x)| *b = half::bf16::from_f32(x).to_bits());
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

    fn set_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut t) = self.timeout.lock() {
            *t = timeout;
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout_now()
    }

    fn at_step(&self, step: u64) {
        self.step.store(step, Ordering::SeqCst);
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        self.all_reduce(values, SystemOperation::sum())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.all_reduce(values, SystemOperation::sum())
    }

    fn all_reduce_max(&self, value: u64) -> Result<u64> {
        let mut v = [value];
        self.all_reduce(&mut v, SystemOperation::max())?;
        Ok(v[0])
    }

    fn barrier(&self) -> Result<()> {
        self.all_reduce_max(0).map(|_| ())
    }
}
