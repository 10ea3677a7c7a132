//! The emulator's model of a GPU's asynchronous copies: staging memory and
//! events that behave as on a GPU, only stricter.
//!
//! Kernels run when they are launched, so a copy queued behind them sees
//! the device memory of that moment (stream order). But a copy lands on the
//! host only when an event recorded behind it is waited on, or is found
//! done once later work has been queued: until then the host's staging
//! buffer keeps its old bytes, and reading it is an error. A staging buffer
//! that an upload reads may not be written again before that upload's
//! event is done. A read of more bytes than the copy brought is an error.
//! So a download path that forgets its event, reads early, or copies a
//! length other than the one it reads fails on every machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::staging::{Event, HostBuf, HostQueue};
use crate::error::{Error, Result};

/// One staging buffer as the model sees it.
struct Staged {
    data: Vec<u8>,
    /// Bytes the host has written (what an upload may take).
    written: usize,
    /// A download on its way: its copy number and its bytes.
    incoming: Option<(u64, Vec<u8>)>,
    /// Bytes the last landed download brought (what a read may take).
    valid: usize,
    /// The copy number of the last upload that reads it.
    outgoing: u64,
}

#[derive(Default)]
struct State {
    next_buf: u64,
    bufs: HashMap<u64, Staged>,
    /// Entries queued so far (copies and events, numbered from 1) and how
    /// many of them have completed, in order.
    queued: u64,
    landed: u64,
    /// A rule the host broke where no error could be returned (a free):
    /// the next call reports it.
    broken: Option<String>,
}

impl State {
    /// Lands every download queued at or before `upto`.
    fn land(&mut self, upto: u64) {
        self.landed = self.landed.max(upto);
        let landed = self.landed;
        for b in self.bufs.values_mut() {
            if let Some((n, bytes)) = b.incoming.take_if(|(n, _)| *n <= landed) {
                let _ = n;
                b.data[..bytes.len()].copy_from_slice(&bytes);
                b.valid = bytes.len();
            }
        }
    }

    fn buf(&mut self, h: &HostBuf) -> Result<&mut Staged> {
        self.bufs
            .get_mut(&h.id)
            .ok_or_else(|| err(format!("staging buffer {} is not allocated", h.id)))
    }

    fn check(&mut self) -> Result<()> {
        match self.broken.take() {
            Some(why) => Err(err(why)),
            None => Ok(()),
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::device("emulator", "copy", msg.into())
}

/// The host side of the emulator's queue.
pub struct EmuQueue {
    /// Host waits for the device, shared with the device's count.
    waits: Arc<AtomicU64>,
    state: Mutex<State>,
}

impl EmuQueue {
    pub fn new(waits: Arc<AtomicU64>) -> Self {
        EmuQueue {
            waits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut s = self.state.lock().map_err(|_| err("the queue's lock is poisoned"))?;
        s.check()?;
        Ok(s)
    }

    /// Queues a download of `bytes` (device memory as it is now) into `dst`.
    pub fn copy_in(&self, dst: &HostBuf, bytes: Vec<u8>) -> Result<()> {
        let mut s = self.lock()?;
        s.queued += 1;
        let n = s.queued;
        let b = s.buf(dst)?;
        if bytes.len() > b.data.len() {
            return Err(err(format!(
                "a copy of {} bytes into a staging buffer of {}",
                bytes.len(),
                b.data.len()
            )));
        }
        b.incoming = Some((n, bytes));
        Ok(())
    }

    /// Queues an upload of the first `bytes` of `src`: the bytes the device
    /// receives (written into its memory at once, in stream order).
    pub fn copy_out(&self, src: &HostBuf, bytes: usize) -> Result<Vec<u8>> {
        let mut s = self.lock()?;
        s.queued += 1;
        let n = s.queued;
        let b = s.buf(src)?;
        if bytes > b.written {
            return Err(err(format!(
                "an upload of {bytes} bytes from a staging buffer the host wrote {} bytes of",
                b.written
            )));
        }
        b.outgoing = n;
        Ok(b.data[..bytes].to_vec())
    }

    /// Everything queued so far completes (a device synchronisation).
    pub fn synchronize(&self) -> Result<()> {
        let mut s = self.lock()?;
        let q = s.queued;
        s.land(q);
        Ok(())
    }
}

impl HostQueue for EmuQueue {
    fn host_alloc(&self, bytes: usize) -> Result<HostBuf> {
        let mut s = self.lock()?;
        s.next_buf += 1;
        let id = s.next_buf;
        s.bufs.insert(
            id,
            Staged {
                // What pinned memory holds before anything is copied into it.
                data: vec![0xA5; bytes],
                written: 0,
                incoming: None,
                valid: 0,
                outgoing: 0,
            },
        );
        Ok(HostBuf { id, bytes })
    }

    fn host_free(&self, buf: &HostBuf) {
        if let Ok(mut s) = self.state.lock() {
            let landed = s.landed;
            let busy = s
                .bufs
                .get(&buf.id)
                .is_some_and(|b| b.incoming.is_some() || b.outgoing > landed);
            if busy {
                s.broken = Some(format!("staging buffer {} was freed while a copy used it", buf.id));
            }
            s.bufs.remove(&buf.id);
        }
    }

    fn host_write(&self, buf: &HostBuf, data: &[u8]) -> Result<()> {
        let mut s = self.lock()?;
        let landed = s.landed;
        let b = s.buf(buf)?;
        if b.outgoing > landed {
            return Err(err(
                "the host wrote a staging buffer that a queued upload has not finished reading (its event was not \
                 done)",
            ));
        }
        if data.len() > b.data.len() {
            return Err(err(format!(
                "{} bytes written into a staging buffer of {}",
                data.len(),
                b.data.len()
            )));
        }
        b.data[..data.len()].copy_from_slice(data);
        b.written = data.len();
        Ok(())
    }

    fn host_read(&self, buf: &HostBuf, bytes: usize) -> Result<Vec<u8>> {
        let mut s = self.lock()?;
        let landed = s.landed;
        let b = s.buf(buf)?;
        if let Some((n, _)) = &b.incoming {
            if *n > landed {
                return Err(err(
                    "the host read a staging buffer before the copy into it had landed (its event was not waited on)",
                ));
            }
        }
        if bytes > b.valid {
            return Err(err(format!(
                "the host read {bytes} bytes of a staging buffer the last copy brought {} bytes into",
                b.valid
            )));
        }
        Ok(b.data[..bytes].to_vec())
    }

    fn record(&self) -> Result<Event> {
        let mut s = self.lock()?;
        s.queued += 1;
        Ok(Event(s.queued))
    }

    fn wait(&self, e: Event) -> Result<()> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock()?;
        if e.0 > s.queued {
            return Err(err("a wait on an event that was never recorded"));
        }
        s.land(e.0);
        Ok(())
    }

    fn done(&self, e: Event) -> Result<bool> {
        let mut s = self.lock()?;
        if e.0 <= s.landed {
            return Ok(true);
        }
        // The device has been given later work, so it has moved past this
        // point; the newest event stays pending until it is waited on.
        if s.queued > e.0 {
            s.land(e.0);
            return Ok(true);
        }
        Ok(false)
    }

    fn forget(&self, _e: Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> EmuQueue {
        EmuQueue::new(Arc::new(AtomicU64::new(0)))
    }

    #[test]
    fn a_download_is_readable_only_after_its_event_is_waited_on() {
        let q = queue();
        let b = q.host_alloc(8).unwrap();
        q.copy_in(&b, vec![1, 2, 3, 4]).unwrap();
        // No event at all: the copy has not landed.
        assert!(q.host_read(&b, 4).is_err());
        let e = q.record().unwrap();
        assert!(!q.done(e).unwrap());
        assert!(q.host_read(&b, 4).is_err());
        q.wait(e).unwrap();
        assert_eq!(q.host_read(&b, 4).unwrap(), vec![1, 2, 3, 4]);
        // More than the copy brought.
        assert!(q.host_read(&b, 8).is_err());
    }

    #[test]
    fn an_upload_buffer_is_rewritten_only_after_its_copy() {
        let q = queue();
        let b = q.host_alloc(8).unwrap();
        q.host_write(&b, &[9; 8]).unwrap();
        assert!(q.copy_out(&b, 9).is_err());
        assert_eq!(q.copy_out(&b, 8).unwrap(), vec![9; 8]);
        assert!(q.host_write(&b, &[1; 8]).is_err());
        let e = q.record().unwrap();
        assert!(q.host_write(&b, &[1; 8]).is_err());
        // Later work queued: the event is found done.
        q.record().unwrap();
        assert!(q.done(e).unwrap());
        q.host_write(&b, &[1; 8]).unwrap();
    }

    #[test]
    fn freeing_a_buffer_under_a_copy_is_reported() {
        let q = queue();
        let b = q.host_alloc(8).unwrap();
        q.copy_in(&b, vec![0; 8]).unwrap();
        q.host_free(&b);
        assert!(q.record().is_err());
    }
}
