//! Batches of superpatches from a prepared cache, made by background threads
//! into a bounded queue and handed out in order.
//!
//! What batch `(epoch, index)` holds is a pure function of the plan and that
//! position: the epoch's shuffled volume order, then `crops_per_volume`
//! consecutive crops of each volume, `batch` samples per batch, the last
//! partial batch dropped (MODEL.md §11). So a resumed run that restarts the loader
//! at its saved position sees exactly the batches it would have seen.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use half::bf16;
use serde::{Deserialize, Serialize};

use super::cache::CachedVolume;
use super::sampler::{copy_hu, sample_crop, Crop, CropSpec};
use crate::dist::Shard;
use crate::error::{Error, Result};
use crate::rng::{stream_id, Purpose, RngStream};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
}

#[derive(Clone, Debug)]
pub enum BatchData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    /// Raw HU (not windowed), for the GPU's fused superpatch-input kernel.
    HuI16(Vec<i16>),
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub position: Position,
    /// `B × 1 × D × H × W`.
    pub shape: [usize; 5],
    pub data: BatchData,
    /// Which volume (index into the plan's files) and crop each sample came from.
    pub sources: Vec<(usize, Crop)>,
}

/// Everything that decides the batches.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    files: Arc<Vec<PathBuf>>,
    pub crop: CropSpec,
    pub batch: usize,
    pub crops_per_volume: usize,
    pub seed: u64,
    pub bf16: bool,
    /// Batches of raw HU as i16 (the same crops), for a device that windows
    /// and adds noise itself.
    pub hu_i16: bool,
    /// Which of the global batches this process takes (all, on one rank).
    pub shard: Shard,
}

impl EpochPlan {
    /// Opens every cache file once; those that fail are left out and
    /// returned with their error, so a run can report them and go on.
    pub fn new(
        files: Vec<PathBuf>,
        crop: CropSpec,
        batch: usize,
        crops_per_volume: usize,
        seed: u64,
    ) -> Result<(Self, Vec<(PathBuf, Error)>)> {
        if batch == 0 || crops_per_volume == 0 {
            return Err(Error::invalid(
                "loader",
                "batch and crops per volume must be at least 1",
            ));
        }
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for f in files {
            match CachedVolume::open(&f) {
                Ok(_) => good.push(f),
                Err(e) => bad.push((f, e)),
            }
        }
        let plan = EpochPlan {
            files: Arc::new(good),
            crop,
            batch,
            crops_per_volume,
            seed,
            bf16: false,
            hu_i16: false,
            shard: Shard::default(),
        };
        if plan.batches_per_epoch() == 0 {
            return Err(Error::invalid(
                "loader",
                format!(
                    "{} usable volumes × {crops_per_volume} crops make no full batch of {batch}; raise \
                     --crops-per-volume or lower --batch",
                    plan.files.len()
                ),
            ));
        }
        Ok((plan, bad))
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.files.len() * self.crops_per_volume / self.batch) as u64
    }

    /// The shuffled volume order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let rng = RngStream::new(self.seed, stream_id(Purpose::Shuffle, epoch, 0));
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        order.sort_by_key(|&i| (rng.bits(i as u64), i));
        order
    }

    /// The position `n` batches after `start`.
    pub fn advance(&self, start: Position, n: u64) -> Position {
        let bpe = self.batches_per_epoch();
        let flat = start.batch + n;
        Position {
            epoch: start.epoch + flat / bpe,
            batch: flat % bpe,
        }
    }

    /// Builds batch `pos` (on the calling thread).
    pub fn make_batch(&self, pos: Position) -> Result<Batch> {
        let order = self.order(pos.epoch);
        let rng = RngStream::new(self.seed, stream_id(Purpose::Crop, pos.epoch, 0));
        let per = self.crop.voxels();
        let mut data = vec![0.0f32; self.batch * per];
        let mut sources = Vec::with_capacity(self.batch);
        let mut raw = self.hu_i16.then(|| vec![0i16; self.batch * per]);
        let mut open: Option<(usize, CachedVolume)> = None;
        for (k, out) in data.chunks_mut(per).enumerate() {
            let s = pos.batch as usize * self.batch + k;
            let v = order[s / self.crops_per_volume];
            if open.as_ref().map(|(i, _)| *i) != Some(v) {
                open = Some((v, CachedVolume::open(&self.files[v])?));
            }
            if let Some((_, vol)) = &open {
                let crop = sample_crop(
                    vol.hu(),
                    vol.shape(),
                    &self.crop,
                    rng,
                    s as u64 * CropSpec::DRAWS_PER_CROP,
                    out,
                );
                if let Some(raw) = raw.as_mut() {
                    copy_hu(
                        vol.hu(),
                        vol.shape(),
                        self.crop.size,
                        crop.origin,
                        &mut raw[k * per..(k + 1) * per],
                    );
                }
                sources.push((v, crop));
            }
        }
        let [d, h, w] = self.crop.size;
        Ok(Batch {
            position: pos,
            shape: [self.batch, 1, d, h, w],
            data: if let Some(raw) = raw {
                BatchData::HuI16(raw)
            } else if self.bf16 {
                BatchData::Bf16(data.iter().map(|&v| bf16::from_f32(v)).collect())
            } else {
                BatchData::F32(data)
            },
            sources,
        })
    }
}

struct Shared {
    claimed: Mutex<u64>,
    consumed: AtomicU64,
    room: Condvar,
    stop: AtomicBool,
}

/// Background batch production: `threads` workers, at most `depth` batches
/// made ahead of the consumer.
pub struct Loader {
    rx: Receiver<(u64, Result<Batch>)>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Result<Batch>>,
    next: u64,
}

impl Loader {
    pub fn start(plan: EpochPlan, from: Position, threads: usize, depth: usize) -> Self {
        let depth = depth.max(1) as u64;
        let shared = Arc::new(Shared {
            claimed: Mutex::new(0),
            consumed: AtomicU64::new(0),
            room: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = sync_channel(depth as usize);
        let plan = Arc::new(plan);
        let workers = (0..threads.max(1))
            .map(|_| {
                let (tx, shared, plan) = (tx.clone(), shared.clone(), plan.clone());
                std::thread::spawn(move || loop {
                    let n = {
                        let Ok(mut claimed) = shared.claimed.lock() else { return };
                        while *claimed >= shared.consumed.load(Ordering::Acquire) + depth
                            && !shared.stop.load(Ordering::Acquire)
                        {
                            claimed = match shared.room.wait(claimed) {
                                Ok(c) => c,
                                Err(_) => return,
                            };
                        }
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        *claimed += 1;
                        *claimed - 1
                    };
                    let batch = plan.make_batch(plan.advance(from, plan.shard.global_batch(n)));
                    if tx.send((n, batch)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Loader {
            rx,
            shared,
            workers,
            pending: BTreeMap::new(),
            next: 0,
        }
    }

    /// The next batch in order (blocks until it is ready).
    pub fn next_batch(&mut self) -> Result<Batch> {
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                self.shared.consumed.store(self.next, Ordering::Release);
                // Taking the lock orders the store before a worker's check.
                drop(self.shared.claimed.lock());
                self.shared.room.notify_all();
                return b;
            }
            match self.rx.recv() {
                Ok((n, b)) => {
                    self.pending.insert(n, b);
                }
                Err(_) => return Err(Error::invalid("loader", "every loader thread stopped")),
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        drop(self.shared.claimed.lock());
        self.shared.room.notify_all();
        // Unblock workers waiting to send.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            // A worker may be blocked in send on a full channel; draining once
            // more after each join attempt frees it.
            while !w.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}
