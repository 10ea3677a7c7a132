//! The operations ranks do together, carried by their devices: GPU ranks
//! sum their losses, compare their weights' checksums and agree to stop
//! through the same NCCL communicator that sums their gradients, a few
//! values at a time through a small device buffer.

use std::sync::Mutex;
use std::time::Duration;

use super::collective::Collective;
use crate::device::{Reduce, SharedDevice};
use crate::error::Result;

pub struct DeviceCollective {
    dev: SharedDevice,
    rank: usize,
    size: usize,
    timeout: Mutex<Option<Duration>>,
}

impl DeviceCollective {
    /// `dev` has joined the other ranks (`DeviceApi::join`).
    pub fn new(dev: SharedDevice, rank: usize, size: usize) -> Self {
        DeviceCollective {
            dev,
            rank,
            size,
            timeout: Mutex::new(None),
        }
    }

    fn through<T: bytemuck::Pod>(&self, values: &mut [T], op: Reduce) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(values);
        let buf = self.dev.alloc_for_upload(bytes.len())?;
        let r = (|| {
            self.dev.upload(&buf, bytes)?;
            self.dev
                .all_reduce(&[(&buf, values_len(bytes.len(), op))], op, self.timeout())?;
            self.dev.download(&buf, bytes)
        })();
        self.dev.free(&buf);
        r
    }
}

fn values_len(bytes: usize, op: Reduce) -> usize {
    bytes / op.elem_bytes()
}

impl Collective for DeviceCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn set_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut t) = self.timeout.lock() {
            *t = timeout;
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout.lock().map(|t| *t).unwrap_or(None)
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        self.through(values, Reduce::SumF32)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.through(values, Reduce::SumF64)
    }

    fn all_reduce_max(&self, value: u64) -> Result<u64> {
        let mut v = [value];
        self.through(&mut v, Reduce::MaxU64)?;
        Ok(v[0])
    }

    fn barrier(&self) -> Result<()> {
        self.all_reduce_max(0).map(|_| ())
    }
}
