//! The host side of the CUDA device's queue: page-locked staging memory
//! (`cuMemHostAlloc`) and events (`cuEventRecord` behind the copies on the
//! device's stream, `cuEventSynchronize` / `cuEventQuery`). The copies
//! themselves (`cuMemcpyDtoHAsync`, `cuMemcpyHtoDAsync`, exactly the bytes
//! asked for) are the device's (mod.rs); backend/staging.rs uses both.
//!
//! Written against the driver API directly: cudarc's pinned slices wait on
//! an event that cudarc records only while its event tracking is on, and
//! this device turns it off (one stream), so their reads would not wait.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext, CudaStream};

use crate::backend::staging::{Event, HostBuf, HostQueue};
use crate::error::{Error, Result};

fn queue_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::device("cuda", what, format!("{e:?}"))
}

/// A pinned allocation (its address as an integer, so the table is `Send`).
struct Pinned {
    ptr: usize,
    bytes: usize,
}

pub struct CudaQueue {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    next: AtomicU64,
    pinned: Mutex<HashMap<u64, Pinned>>,
    /// Events let go of, reused by `record` (creating one costs a driver call).
    spare: Mutex<Vec<usize>>,
}

impl CudaQueue {
    pub fn new(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Self {
        CudaQueue {
            ctx,
            stream,
            next: AtomicU64::new(1),
            pinned: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
        }
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| queue_err("binding the context", e))
    }

    /// The address and capacity of a staging buffer.
    pub fn host_ptr(&self, buf: &HostBuf) -> Result<(*mut u8, usize)> {
        let p = self
            .pinned
            .lock()
            .map_err(|_| queue_err("staging table", "poisoned lock"))?;
        let h = p
            .get(&buf.id)
            .ok_or_else(|| queue_err("staging", format!("buffer {} is not allocated", buf.id)))?;
        Ok((h.ptr as *mut u8, h.bytes))
    }

    fn event(e: Event) -> sys::CUevent {
        e.0 as usize as sys::CUevent
    }
}

impl HostQueue for CudaQueue {
    fn host_alloc(&self, bytes: usize) -> Result<HostBuf> {
        self.bind()?;
        // SAFETY: a plain page-locked allocation; its bytes are written by a
        // copy or the host before anything reads them.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }
            .map_err(|e| queue_err(&format!("{bytes} bytes of page-locked host memory"), e))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pinned
            .lock()
            .map_err(|_| queue_err("staging table", "poisoned lock"))?
            .insert(
                id,
                Pinned {
                    ptr: ptr as usize,
                    bytes,
                },
            );
        Ok(HostBuf { id, bytes })
    }

    fn host_free(&self, buf: &HostBuf) {
        let Some(h) = self.pinned.lock().ok().and_then(|mut p| p.remove(&buf.id)) else {
            return;
        };
        if self.bind().is_ok() {
            // SAFETY: allocated by `host_alloc`; no copy uses it any more
            // (the staging pools free only buffers whose events are done).
            let _ = unsafe { result::free_host(h.ptr as *mut c_void) };
        }
    }

    fn host_write(&self, buf: &HostBuf, data: &[u8]) -> Result<()> {
        let (ptr, cap) = self.host_ptr(buf)?;
        if data.len() > cap {
            return Err(queue_err("staging", format!("{} bytes into {cap}", data.len())));
        }
        // SAFETY: `ptr` addresses `cap` bytes of our pinned allocation, and
        // no copy reads it now (its last upload's event is done).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
        Ok(())
    }

    fn host_read(&self, buf: &HostBuf, bytes: usize) -> Result<Vec<u8>> {
        let (ptr, cap) = self.host_ptr(buf)?;
        if bytes > cap {
            return Err(queue_err("staging", format!("{bytes} bytes out of {cap}")));
        }
        // SAFETY: the download's event has been waited on, so the copy into
        // these bytes is complete and nothing writes them now.
        Ok(unsafe { std::slice::from_raw_parts(ptr, bytes) }.to_vec())
    }

    fn record(&self) -> Result<Event> {
        self.bind()?;
        let reused = self.spare.lock().ok().and_then(|mut s| s.pop());
        let ev = match reused {
            Some(e) => e as sys::CUevent,
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| queue_err("creating an event", e))?,
        };
        // SAFETY: `ev` is a live event of this context; the stream is ours.
        if let Err(e) = unsafe { result::event::record(ev, self.stream.cu_stream()) } {
            // SAFETY: created above or taken from the spares, destroyed once.
            let _ = unsafe { result::event::destroy(ev) };
            return Err(queue_err("recording an event", e));
        }
        Ok(Event(ev as usize as u64))
    }

    fn wait(&self, e: Event) -> Result<()> {
        self.bind()?;
        // SAFETY: a live event recorded by `record`.
        unsafe { result::event::synchronize(Self::event(e)) }.map_err(|err| queue_err("waiting for the device", err))
    }

    fn done(&self, e: Event) -> Result<bool> {
        self.bind()?;
        // SAFETY: a live event recorded by `record`.
        match unsafe { result::event::query(Self::event(e)) } {
            Ok(()) => Ok(true),
            Err(err) if err.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(err) => Err(queue_err("asking whether the device is done", err)),
        }
    }

    fn forget(&self, e: Event) {
        match self.spare.lock() {
            Ok(mut s) => s.push(e.0 as usize),
            Err(_) => {
                // SAFETY: a live event, destroyed once.
                let _ = unsafe { result::event::destroy(Self::event(e)) };
            }
        }
    }
}

impl Drop for CudaQueue {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        // Whatever is still queued finishes before its memory goes.
        let _ = self.stream.synchronize();
        if let Ok(mut s) = self.spare.lock() {
            for e in s.drain(..) {
                // SAFETY: spare events are live and unused.
                let _ = unsafe { result::event::destroy(e as sys::CUevent) };
            }
        }
        if let Ok(mut p) = self.pinned.lock() {
            for (_, h) in p.drain() {
                // SAFETY: allocated by `host_alloc`; the stream is idle.
                let _ = unsafe { result::free_host(h.ptr as *mut c_void) };
            }
        }
    }
}
