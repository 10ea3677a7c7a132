//! Step graphs: one training step's device work recorded once, then
//! replayed as a single unit (a CUDA graph on a GPU, the recorded list on
//! the emulator), so a step costs one launch instead of thousands.
//!
//! How it works, the same on every device:
//!
//! - **Record.** A step runs as usual while the device notes every
//!   allocation, upload, kernel launch, GEMM and queued download, in order.
//!   Memory allocated while recording belongs to the graph: its owner may let
//!   go of it, but it is only freed when the graph is dropped, so every
//!   address the graph captured stays valid. Uploads may only go into such
//!   memory (anything older could be changed behind the graph's back).
//! - **Replay.** The next step runs the same host code, but nothing reaches
//!   the device: each call is matched with the recorded one at the same
//!   place. An allocation hands back the recorded buffer. An upload keeps
//!   its new bytes, which go to the device just before the graph runs
//!   (uploads only ever go into memory the graph allocated, never reused
//!   within a step, so moving them before the graph changes nothing). A
//!   launch whose scalar arguments differ (the step's random streams, its
//!   learning rate) updates the recorded launch; any other difference (a
//!   kernel, a geometry, a buffer, a GEMM) is an error, since the graph
//!   would then compute something else. A queued download is made after the
//!   graph has run.
//! - **Launch.** At the end of a replay the device copies the uploads,
//!   applies the updated arguments, runs the graph, and queues the
//!   downloads.
//!
//! Nothing here waits for the device; a blocking download or a
//! synchronisation inside a recorded step is an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::device::{Arg, Buffer, Gemm, GraphCounts, Launch, MemoryUse, PendingDownload};
use crate::error::{Error, Result};

/// One recorded device call.
#[derive(Clone, Debug)]
pub enum Op {
    Alloc {
        id: u64,
        bytes: usize,
    },
    Upload {
        dst: u64,
        len: usize,
    },
    Launch {
        kernel: String,
        cfg: Launch,
        args: Vec<Arg>,
    },
    Gemm {
        g: Gemm,
        a: u64,
        b: u64,
        c: u64,
        bias: Option<u64>,
    },
    Download {
        src: u64,
        bytes: usize,
    },
}

impl Op {
    fn name(&self) -> String {
        match self {
            Op::Alloc { bytes, .. } => format!("an allocation of {bytes} bytes"),
            Op::Upload { len, .. } => format!("an upload of {len} bytes"),
            Op::Launch { kernel, .. } => format!("kernel `{kernel}`"),
            Op::Gemm { g, .. } => format!("a {}×{}×{} GEMM", g.m, g.n, g.k),
            Op::Download { bytes, .. } => format!("a download of {bytes} bytes"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Off,
    Recording,
    Replaying,
}

/// Where a download queued during a replay arrives once the graph has run.
type Slot = Arc<Mutex<Option<Box<dyn PendingDownload>>>>;

/// A download queued during a replay: it exists once the graph has run.
struct LaterDownload(Slot);

impl PendingDownload for LaterDownload {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        let inner = self
            .0
            .lock()
            .map_err(|_| Error::invalid("step graph", "a download's slot lock is poisoned"))?
            .take();
        match inner {
            Some(p) => p.wait(),
            None => Err(Error::invalid(
                "step graph",
                "a value of a replayed step was read before the step's graph was launched",
            )),
        }
    }
}

/// A download that could not be queued after a graph had run: the error
/// comes out when the value is read.
pub struct FailedDownload(pub String);

impl PendingDownload for FailedDownload {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        Err(err(format!("a value of the step could not be read back: {}", self.0)))
    }
}

/// What a replay leaves for the device to do when it launches the graph.
pub struct Replay {
    /// `(buffer, bytes)` to copy before the graph runs.
    pub uploads: Vec<(u64, Vec<u8>)>,
    /// Indices (into `ops`) of launches whose scalar arguments changed.
    pub updated: Vec<usize>,
    /// Downloads to queue after the graph: `(buffer, bytes, slot)`.
    pub downloads: Vec<(u64, usize, Slot)>,
}

impl Replay {
    /// Fills a download's slot with the device's pending copy, or with the
    /// error of queueing it (the graph has run by then, so a failure here
    /// must not look like a graph that did not run).
    pub fn deliver(slot: &Slot, p: Result<Box<dyn PendingDownload>>) {
        let p = p.unwrap_or_else(|e| Box::new(FailedDownload(e.to_string())));
        if let Ok(mut s) = slot.lock() {
            *s = Some(p);
        }
    }
}

/// A buffer of the graph's memory.
#[derive(Clone, Copy, Debug)]
struct Held {
    bytes: usize,
    /// Its owner has let go of it.
    released: bool,
    /// Another allocation of the recording may take it once released: not
    /// when it is uploaded into (the upload moves before the graph) or read
    /// back (the download moves after it).
    reusable: bool,
    /// It has been handed out more than once in the recording.
    reused: bool,
}

/// What a device call should do after the recorder has seen it.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Run it on the device (not replaying).
    Run,
    /// Nothing more: the replay has taken it.
    Taken,
}

/// The recording state of one device.
pub struct Recorder {
    phase: Phase,
    ops: Vec<Op>,
    cursor: usize,
    /// Buffers the recording allocated.
    arena: HashMap<u64, Held>,
    /// While recording: buffers let go of that a later allocation of the
    /// same size may take, by size.
    spare: HashMap<usize, Vec<u64>>,
    arena_bytes: usize,
    /// Bytes allocated through the device now, and the most at any time
    /// since the last `reset_peak`.
    live: usize,
    peak: usize,
    replay: Option<Replay>,
    /// A graph has been recorded (and not dropped).
    recorded: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            phase: Phase::Off,
            ops: Vec::new(),
            cursor: 0,
            arena: HashMap::new(),
            spare: HashMap::new(),
            arena_bytes: 0,
            live: 0,
            peak: 0,
            replay: None,
            recorded: false,
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::invalid("step graph", msg.into())
}

impl Recorder {
    /// Starts recording (the device runs every call as usual meanwhile).
    pub fn begin_record(&mut self) -> Result<()> {
        if self.phase != Phase::Off || self.recorded {
            return Err(err("a step is already recorded or being recorded on this device"));
        }
        self.phase = Phase::Recording;
        Ok(())
    }

    /// Ends the recording; the device builds its graph from `ops()`.
    pub fn end_record(&mut self) -> Result<()> {
        if self.phase != Phase::Recording {
            return Err(err("no recording to end"));
        }
        self.phase = Phase::Off;
        self.recorded = true;
        self.spare.clear();
        Ok(())
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Launches, GEMMs, allocations, uploads and downloads recorded.
    pub fn counts(&self) -> GraphCounts {
        let mut c = GraphCounts {
            arena_bytes: self.arena_bytes,
            ..GraphCounts::default()
        };
        for op in &self.ops {
            match op {
                Op::Alloc { .. } => c.allocs += 1,
                Op::Upload { .. } => c.uploads += 1,
                Op::Launch { .. } => c.launches += 1,
                Op::Gemm { .. } => c.gemms += 1,
                Op::Download { .. } => c.downloads += 1,
            }
        }
        c
    }

    /// Starts a replay of the recorded step.
    pub fn begin_replay(&mut self) -> Result<()> {
        if self.phase != Phase::Off || !self.recorded {
            return Err(err("there is no recorded step to replay"));
        }
        if let Some(id) = self.arena.iter().find(|(_, h)| !h.released).map(|(id, _)| *id) {
            return Err(err(format!(
                "buffer {id} of the recorded step is still in use outside it, so the step cannot be replayed"
            )));
        }
        self.phase = Phase::Replaying;
        self.cursor = 0;
        self.replay = Some(Replay {
            uploads: Vec::new(),
            updated: Vec::new(),
            downloads: Vec::new(),
        });
        Ok(())
    }

    /// Ends a replay that matched the recording: what the device must do
    /// to run it.
    pub fn end_replay(&mut self) -> Result<Replay> {
        if self.phase != Phase::Replaying {
            return Err(err("no replay to end"));
        }
        self.phase = Phase::Off;
        let replay = self.replay.take().ok_or_else(|| err("no replay to end"))?;
        if self.cursor != self.ops.len() {
            return Err(err(format!(
                "the step stopped after {} of the {} recorded device calls; next was {}",
                self.cursor,
                self.ops.len(),
                self.ops[self.cursor].name()
            )));
        }
        Ok(replay)
    }

    /// Leaves a replay that failed (nothing of it reached the device).
    pub fn abandon_replay(&mut self) {
        if self.phase == Phase::Replaying {
            self.phase = Phase::Off;
            self.replay = None;
            // Whatever the abandoned replay handed out has been dropped or
            // will be; the graph's memory stays the graph's.
            for h in self.arena.values_mut() {
                h.released = true;
            }
        }
    }

    /// Forgets the recording; returns the buffers to free now (those whose
    /// owner has let go). Buffers still owned go back to their owners.
    pub fn drop_graph(&mut self) -> Vec<u64> {
        self.phase = Phase::Off;
        self.ops.clear();
        self.cursor = 0;
        self.replay = None;
        self.recorded = false;
        self.arena_bytes = 0;
        let mut ids = Vec::new();
        self.spare.clear();
        for (id, h) in self.arena.drain() {
            if h.released {
                self.live = self.live.saturating_sub(h.bytes);
                ids.push(id);
            }
        }
        ids
    }

    /// The device memory in use now and at most, as seen through the recorder.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            live: self.live,
            peak: self.peak,
        }
    }

    /// Starts a new peak from what is in use now.
    pub fn reset_peak(&mut self) {
        self.peak = self.live;
    }

    /// The next recorded call of a replay, which must be of the kind `what`.
    fn next(&mut self, what: &str) -> Result<usize> {
        let i = self.cursor;
        if i >= self.ops.len() {
            return Err(err(format!(
                "the step makes more device calls than the {} recorded ({what} after the last), so it cannot be replayed",
                self.ops.len()
            )));
        }
        self.cursor += 1;
        Ok(i)
    }

    fn mismatch(&self, i: usize, got: String) -> Error {
        err(format!(
            "device call {i} of the step was {}; the recorded step had {}, so it cannot be replayed",
            got,
            self.ops[i].name()
        ))
    }

    /// An allocation: during a replay the recorded buffer; while recording,
    /// a buffer of the graph let go of earlier in the step, when there is one
    /// of the size and `for_upload` is false (`None`: the device allocates).
    pub fn alloc(&mut self, bytes: usize, for_upload: bool) -> Result<Option<Buffer>> {
        match self.phase {
            Phase::Off => Ok(None),
            Phase::Recording => {
                if for_upload {
                    return Ok(None);
                }
                let Some(id) = self.spare.get_mut(&bytes).and_then(|v| v.pop()) else {
                    return Ok(None);
                };
                let h = self
                    .arena
                    .get_mut(&id)
                    .ok_or_else(|| err("a recorded buffer is gone"))?;
                h.released = false;
                h.reused = true;
                self.ops.push(Op::Alloc { id, bytes });
                Ok(Some(Buffer { id, bytes }))
            }
            Phase::Replaying => {
                let i = self.next("an allocation")?;
                match self.ops[i] {
                    Op::Alloc { id, bytes: b } if b == bytes => {
                        let h = self
                            .arena
                            .get_mut(&id)
                            .ok_or_else(|| err("a recorded buffer is gone"))?;
                        if !h.released {
                            return Err(err(format!(
                                "buffer {id} is taken again before its owner let go, so the step cannot be replayed"
                            )));
                        }
                        h.released = false;
                        Ok(Some(Buffer { id, bytes }))
                    }
                    _ => Err(self.mismatch(i, format!("an allocation of {bytes} bytes"))),
                }
            }
        }
    }

    /// A buffer the device has just allocated (kept when recording).
    pub fn allocated(&mut self, buf: &Buffer) {
        self.live += buf.bytes;
        self.peak = self.peak.max(self.live);
        if self.phase == Phase::Recording {
            self.ops.push(Op::Alloc {
                id: buf.id,
                bytes: buf.bytes,
            });
            self.arena.insert(
                buf.id,
                Held {
                    bytes: buf.bytes,
                    released: false,
                    reusable: true,
                    reused: false,
                },
            );
            self.arena_bytes += buf.bytes;
        }
    }

    /// A free: `true` when the graph keeps the buffer (it is not freed);
    /// otherwise the device frees it now.
    pub fn keeps(&mut self, buf: &Buffer) -> bool {
        match self.arena.get_mut(&buf.id) {
            Some(h) => {
                h.released = true;
                if self.phase == Phase::Recording && h.reusable {
                    self.spare.entry(h.bytes).or_default().push(buf.id);
                }
                true
            }
            None => {
                self.live = self.live.saturating_sub(buf.bytes);
                false
            }
        }
    }

    pub fn upload(&mut self, dst: &Buffer, src: &[u8]) -> Result<Flow> {
        match self.phase {
            Phase::Off => Ok(Flow::Run),
            Phase::Recording => {
                match self.arena.get_mut(&dst.id) {
                    Some(h) if !h.reused => h.reusable = false,
                    Some(_) => {
                        return Err(err(
                            "an upload into memory used earlier in the step (allocate it with `alloc_for_upload`)",
                        ))
                    }
                    None => {
                        return Err(err(
                            "an upload into memory allocated before the step: a replay could not repeat it in order",
                        ))
                    }
                }
                self.ops.push(Op::Upload {
                    dst: dst.id,
                    len: src.len(),
                });
                Ok(Flow::Run)
            }
            Phase::Replaying => {
                let i = self.next("an upload")?;
                match self.ops[i] {
                    Op::Upload { dst: d, len } if d == dst.id && len == src.len() => {
                        if let Some(r) = &mut self.replay {
                            r.uploads.push((dst.id, src.to_vec()));
                        }
                        Ok(Flow::Taken)
                    }
                    _ => Err(self.mismatch(i, format!("an upload of {} bytes", src.len()))),
                }
            }
        }
    }

    pub fn launch(&mut self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<Flow> {
        match self.phase {
            Phase::Off => Ok(Flow::Run),
            Phase::Recording => {
                self.ops.push(Op::Launch {
                    kernel: kernel.to_string(),
                    cfg: *cfg,
                    args: args.to_vec(),
                });
                Ok(Flow::Run)
            }
            Phase::Replaying => {
                let i = self.next("a launch")?;
                let now: Vec<Arg> = args.to_vec();
                let changed = match &self.ops[i] {
                    Op::Launch {
                        kernel: k,
                        cfg: c,
                        args: a,
                    } if k == kernel && c == cfg && a.len() == now.len() => {
                        let mut changed = false;
                        for (old, new) in a.iter().zip(&now) {
                            let buffers = matches!(old, Arg::Buf(_)) || matches!(new, Arg::Buf(_));
                            if !old.same(new) {
                                if buffers {
                                    return Err(self.mismatch(i, format!("kernel `{kernel}` on other buffers")));
                                }
                                changed = true;
                            }
                        }
                        changed
                    }
                    _ => return Err(self.mismatch(i, format!("kernel `{kernel}` ({cfg:?})"))),
                };
                if changed {
                    if let Op::Launch { args: a, .. } = &mut self.ops[i] {
                        *a = now;
                    }
                    if let Some(r) = &mut self.replay {
                        r.updated.push(i);
                    }
                }
                Ok(Flow::Taken)
            }
        }
    }

    pub fn gemm(&mut self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<Flow> {
        let op = Op::Gemm {
            g: *g,
            a: a.id,
            b: b.id,
            c: c.id,
            bias: bias.map(|x| x.id),
        };
        match self.phase {
            Phase::Off => Ok(Flow::Run),
            Phase::Recording => {
                self.ops.push(op);
                Ok(Flow::Run)
            }
            Phase::Replaying => {
                let i = self.next("a GEMM")?;
                let same = matches!(
                    (&self.ops[i], &op),
                    (Op::Gemm { g: g0, a: a0, b: b0, c: c0, bias: d0 }, Op::Gemm { g: g1, a: a1, b: b1, c: c1, bias: d1 })
                        if g0 == g1 && a0 == a1 && b0 == b1 && c0 == c1 && d0 == d1
                );
                if !same {
                    return Err(self.mismatch(i, op.name()));
                }
                Ok(Flow::Taken)
            }
        }
    }

    /// A queued download: during a replay, one that arrives after the graph.
    pub fn download_later(&mut self, src: &Buffer, bytes: usize) -> Result<Option<Box<dyn PendingDownload>>> {
        match self.phase {
            Phase::Off => Ok(None),
            Phase::Recording => {
                // Read after the graph: nothing later in the step may take it.
                if let Some(h) = self.arena.get_mut(&src.id) {
                    h.reusable = false;
                }
                self.ops.push(Op::Download { src: src.id, bytes });
                Ok(None)
            }
            Phase::Replaying => {
                let i = self.next("a download")?;
                match self.ops[i] {
                    Op::Download { src: s, bytes: b } if s == src.id && b == bytes => {
                        let slot: Slot = Arc::new(Mutex::new(None));
                        if let Some(r) = &mut self.replay {
                            r.downloads.push((src.id, bytes, slot.clone()));
                        }
                        Ok(Some(Box::new(LaterDownload(slot))))
                    }
                    _ => Err(self.mismatch(i, format!("a download of {bytes} bytes"))),
                }
            }
        }
    }

    /// A call that makes the host wait: not allowed inside a step graph.
    pub fn wait(&self, what: &str) -> Result<()> {
        match self.phase {
            Phase::Off => Ok(()),
            _ => Err(err(format!(
                "{what} inside a recorded step: a graph cannot wait for the host"
            ))),
        }
    }
}

/// Locks a device's recorder.
pub fn lock(r: &Mutex<Recorder>) -> Result<std::sync::MutexGuard<'_, Recorder>> {
    r.lock().map_err(|_| err("the recorder's lock is poisoned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(id: u64) -> Buffer {
        Buffer { id, bytes: 64 }
    }

    #[test]
    fn an_upload_into_memory_from_before_the_recording_is_refused() {
        let mut r = Recorder::default();
        r.begin_record().unwrap();
        assert!(r.upload(&buf(7), &[1, 2]).is_err());
        r.allocated(&buf(8));
        assert_eq!(r.upload(&buf(8), &[1, 2]).unwrap(), Flow::Run);
    }

    #[test]
    fn a_replay_updates_scalars_refuses_other_buffers_and_defers_uploads() {
        let mut r = Recorder::default();
        r.begin_record().unwrap();
        r.allocated(&buf(1));
        r.upload(&buf(1), &[0; 8]).unwrap();
        let cfg = Launch::linear(1, 32, 0);
        r.launch("k", &cfg, &[Arg::Buf(1), Arg::F32(0.5)]).unwrap();
        r.end_record().unwrap();
        let c = r.counts();
        assert_eq!((c.allocs, c.uploads, c.launches, c.arena_bytes), (1, 1, 1, 64));

        // The owner lets go; a replay hands the same buffer back.
        assert!(r.keeps(&buf(1)));
        r.begin_replay().unwrap();
        assert_eq!(r.alloc(64, false).unwrap(), Some(buf(1)));
        assert_eq!(r.upload(&buf(1), &[3; 8]).unwrap(), Flow::Taken);
        assert_eq!(
            r.launch("k", &cfg, &[Arg::Buf(1), Arg::F32(0.25)]).unwrap(),
            Flow::Taken
        );
        let replay = r.end_replay().unwrap();
        assert_eq!(replay.uploads, vec![(1, vec![3; 8])]);
        assert_eq!(replay.updated, vec![2]);
        assert!(matches!(&r.ops()[2], Op::Launch { args, .. } if matches!(args[1], Arg::F32(v) if v == 0.25)));

        // The buffer is still held by the last replay's owner.
        assert!(r.begin_replay().is_err());
        r.keeps(&buf(1));
        r.begin_replay().unwrap();
        r.alloc(64, false).unwrap();
        r.upload(&buf(1), &[0; 8]).unwrap();
        let e = r.launch("k", &cfg, &[Arg::Buf(2), Arg::F32(0.5)]).unwrap_err();
        assert!(e.to_string().contains("cannot be replayed"), "{e}");
        r.abandon_replay();
        // Dropping the graph frees what it held.
        assert_eq!(r.drop_graph(), vec![1]);
    }

    #[test]
    fn the_graph_holds_its_memory_until_it_is_dropped() {
        let mut r = Recorder::default();
        r.allocated(&buf(1));
        assert!(!r.keeps(&buf(1)));
        r.begin_record().unwrap();
        r.allocated(&buf(2));
        r.allocated(&buf(3));
        r.end_record().unwrap();
        assert!(r.keeps(&buf(2)) && r.keeps(&buf(3)));
        // Let go of, but still held by the graph.
        assert_eq!(r.memory(), MemoryUse { live: 128, peak: 128 });
        r.reset_peak();
        assert_eq!(r.drop_graph().len(), 2);
        assert_eq!(r.memory(), MemoryUse { live: 0, peak: 128 });
    }

    #[test]
    fn waiting_inside_a_recording_is_refused() {
        let mut r = Recorder::default();
        assert!(r.wait("a download").is_ok());
        r.begin_record().unwrap();
        assert!(r.wait("a download").is_err());
    }
}
