//! Copies between the host and a device, made in the device's own time.
//!
//! A device copies to and from page-locked ("pinned") host memory while the
//! host goes on; the host learns that a copy has finished only through an
//! event recorded behind it. So every copy here goes the same way, on
//! every device:
//!
//! - **Download**: take a staging buffer, queue the copy of exactly the
//!   bytes asked for into it, record an event. The bytes are read only after
//!   the host has waited on that event; the buffer goes back to the pool
//!   only then (a download dropped unread waits first).
//! - **Upload**: write the bytes into a staging buffer whose previous copy
//!   has finished, queue the copy to the device, record an event; the buffer
//!   is written again only once that event is done. So an upload never waits
//!   for the device, and a replayed step's uploads go out from pinned memory
//!   (a copy from pageable memory may wait for the work queued before it).
//!
//! The CUDA device makes the copies with `cuMemcpy*Async` and CUDA events;
//! the emulator models them (a queued copy lands only when its event is
//! waited on, and reading or rewriting a buffer before that is an error), so
//! this code is tested everywhere.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::device::PendingDownload;
use crate::error::{Error, Result};

/// Page-locked host memory that a device copies to or from.
#[derive(Debug, PartialEq, Eq)]
pub struct HostBuf {
    pub(crate) id: u64,
    /// Its capacity.
    pub bytes: usize,
}

/// A point in a device's queue, done once everything queued before it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event(pub(crate) u64);

/// The host's side of a device's queue: its staging memory and events.
pub trait HostQueue: Send + Sync {
    fn host_alloc(&self, bytes: usize) -> Result<HostBuf>;
    /// Frees a staging buffer no copy uses any more.
    fn host_free(&self, buf: &HostBuf);
    /// The host writes the first `data.len()` bytes of `buf`.
    fn host_write(&self, buf: &HostBuf, data: &[u8]) -> Result<()>;
    /// The host reads the first `bytes` bytes of `buf`.
    fn host_read(&self, buf: &HostBuf, bytes: usize) -> Result<Vec<u8>>;
    /// Records an event behind everything queued so far.
    fn record(&self) -> Result<Event>;
    /// Waits until the event is done (the host waits for the device).
    fn wait(&self, e: Event) -> Result<()>;
    /// Whether the event is done, without waiting.
    fn done(&self, e: Event) -> Result<bool>;
    /// Lets go of an event.
    fn forget(&self, e: Event);
}

/// Staging buffers busy with uploads, beyond which an upload waits for the
/// oldest (a bound on pinned memory, never reached when the device keeps up).
const MAX_BUSY_UPLOADS: usize = 32;

/// One device's staging buffers.
pub struct Staging {
    queue: Arc<dyn HostQueue>,
    /// Download buffers whose copies have been read.
    idle: Arc<Mutex<Vec<HostBuf>>>,
    /// Upload buffers, oldest first, each with the event of its last copy.
    uploads: Mutex<VecDeque<(HostBuf, Event)>>,
}

fn lock_err(what: &str) -> Error {
    Error::invalid("staging", format!("the {what} lock is poisoned"))
}

impl Staging {
    pub fn new(queue: Arc<dyn HostQueue>) -> Self {
        Staging {
            queue,
            idle: Arc::new(Mutex::new(Vec::new())),
            uploads: Mutex::new(VecDeque::new()),
        }
    }

    pub fn queue(&self) -> &Arc<dyn HostQueue> {
        &self.queue
    }

    /// A download buffer of at least `bytes`: the smallest idle one, else a
    /// new one (sizes in powers of two, so a few serve every download).
    fn take_download(&self, bytes: usize) -> Result<HostBuf> {
        let reused = {
            let mut idle = self.idle.lock().map_err(|_| lock_err("download pool"))?;
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.bytes >= bytes)
                .min_by_key(|(_, b)| b.bytes)
                .map(|(i, _)| i);
            best.map(|i| idle.swap_remove(i))
        };
        match reused {
            Some(b) => Ok(b),
            None => self.queue.host_alloc(bytes.next_power_of_two().max(256)),
        }
    }

    /// An upload buffer of at least `bytes` whose last copy has finished.
    fn take_upload(&self, bytes: usize) -> Result<HostBuf> {
        let mut ups = self.uploads.lock().map_err(|_| lock_err("upload pool"))?;
        // The smallest finished buffer that holds it, so a small upload does
        // not take the big buffer the next batch needs.
        let mut found: Option<usize> = None;
        for (i, (b, e)) in ups.iter().enumerate() {
            let smaller = found.is_none_or(|f| b.bytes < ups[f].0.bytes);
            if b.bytes >= bytes && smaller && self.queue.done(*e)? {
                found = Some(i);
            }
        }
        if found.is_none() && ups.len() >= MAX_BUSY_UPLOADS {
            // The device is far behind: wait for the oldest copy.
            if let Some((_, e)) = ups.front() {
                self.queue.wait(*e)?;
            }
            found = Some(0);
        }
        if let Some((b, e)) = found.and_then(|i| ups.remove(i)) {
            self.queue.forget(e);
            if b.bytes >= bytes {
                return Ok(b);
            }
            self.queue.host_free(&b);
        }
        drop(ups);
        self.queue.host_alloc(bytes.next_power_of_two().max(4096))
    }

    /// Queues an upload of `data` through a staging buffer: `copy` queues
    /// the device's copy from it. Returns without waiting for the device.
    pub fn upload(&self, data: &[u8], copy: impl FnOnce(&HostBuf) -> Result<()>) -> Result<()> {
        let buf = self.take_upload(data.len())?;
        let queued = self.queue.host_write(&buf, data).and_then(|_| copy(&buf));
        if let Err(e) = queued {
            // Nothing was queued from it (or the queue is broken): keep it idle.
            match self.queue.record() {
                Ok(ev) => self.busy(buf, ev),
                Err(_) => self.queue.host_free(&buf),
            }
            return Err(e);
        }
        match self.queue.record() {
            Ok(ev) => {
                self.busy(buf, ev);
                Ok(())
            }
            // The copy is queued but cannot be followed: never reuse the
            // buffer (leaked rather than freed under a copy).
            Err(e) => Err(e),
        }
    }

    fn busy(&self, buf: HostBuf, ev: Event) {
        match self.uploads.lock() {
            Ok(mut ups) => ups.push_back((buf, ev)),
            Err(_) => self.queue.forget(ev),
        }
    }

    /// Queues a download of `bytes` bytes: `copy` queues the device's copy
    /// into the staging buffer it is given. Returns at once.
    pub fn download(
        &self,
        bytes: usize,
        copy: impl FnOnce(&HostBuf) -> Result<()>,
    ) -> Result<Box<dyn PendingDownload>> {
        let buf = self.take_download(bytes)?;
        if let Err(e) = copy(&buf) {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(buf);
            }
            return Err(e);
        }
        // Behind the copy: without this event the host could not know when
        // the bytes have arrived. If it cannot be recorded, the buffer is
        // never reused (leaked rather than freed under a copy).
        let event = self.queue.record()?;
        Ok(Box::new(StagedDownload {
            queue: self.queue.clone(),
            idle: self.idle.clone(),
            buf: Some(buf),
            bytes,
            event,
        }))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Ok(mut ups) = self.uploads.lock() {
            for (b, e) in ups.drain(..) {
                if self.queue.wait(e).is_ok() {
                    self.queue.host_free(&b);
                }
                self.queue.forget(e);
            }
        }
        if let Ok(mut idle) = self.idle.lock() {
            for b in idle.drain(..) {
                self.queue.host_free(&b);
            }
        }
    }
}

/// A download queued into a staging buffer, with the event behind it.
struct StagedDownload {
    queue: Arc<dyn HostQueue>,
    idle: Arc<Mutex<Vec<HostBuf>>>,
    buf: Option<HostBuf>,
    bytes: usize,
    event: Event,
}

impl StagedDownload {
    /// Waits for the copy; the buffer goes back to the pool once it has
    /// arrived (never while a copy may still write it).
    fn finish(&mut self) -> Result<Option<HostBuf>> {
        let Some(buf) = self.buf.take() else {
            return Ok(None);
        };
        // On an error the copy's fate is unknown: the buffer is not reused.
        self.queue.wait(self.event)?;
        self.queue.forget(self.event);
        Ok(Some(buf))
    }

    fn give_back(&self, buf: HostBuf) {
        match self.idle.lock() {
            Ok(mut idle) => idle.push(buf),
            Err(_) => self.queue.host_free(&buf),
        }
    }
}

impl PendingDownload for StagedDownload {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        let buf = self.finish()?.ok_or_else(|| Error::invalid("download", "read twice"))?;
        let out = self.queue.host_read(&buf, self.bytes);
        self.give_back(buf);
        out
    }
}

impl Drop for StagedDownload {
    fn drop(&mut self) {
        if let Ok(Some(buf)) = self.finish() {
            self.give_back(buf);
        }
    }
}
