//! Gradients summed over the ranks of a data-parallel run.

use crate::autograd::{ParamId, ParamStore};
use crate::backend::gpu;
use crate::device::{Buffer, Reduce};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::time::Duration;

/// The most gradient bytes one all-reduce call carries on a device (NCCL's
/// group of buffers); docs/SCALING.md says how the size was chosen.
/// `NEMESIS_BUCKET_BYTES` sets another (tests use tiny ones).
pub const BUCKET_BYTES: usize = 25 << 20;

/// The bucket size in force: `NEMESIS_BUCKET_BYTES`, else `BUCKET_BYTES`.
pub fn bucket_bytes() -> Result<usize> {
    match std::env::var("NEMESIS_BUCKET_BYTES") {
        Err(_) => Ok(BUCKET_BYTES),
        Ok(v) => v.trim().parse::<usize>().ok().filter(|&b| b > 0).ok_or_else(|| {
            Error::invalid(
                "NEMESIS_BUCKET_BYTES",
                format!("{v:?} is not a positive number of bytes"),
            )
        }),
    }
}

/// Sums every parameter's gradient over the ranks of a run whose weights
/// are on the host (CPU ranks): one collective call for all of them; a parameter without a
/// gradient on this rank counts as zeros, so every rank sends the same
/// values. Device ranks sum theirs during the backward pass (`GradBuckets`).
/// With `bf16`, each rank's values are rounded to bf16 and so is the sum,
/// as a bf16 all-reduce between GPUs does.
pub fn all_reduce_grads(store: &mut ParamStore, c: &dyn Collective, bf16: bool) -> Result<()> {
    let mut flat = Vec::with_capacity(store.num_elements());
    let mut shapes = Vec::new();
    for (id, p) in store.iter() {
        let n = p.value.numel();
        match &p.grad {
            Some(g) => flat.extend_from_slice(g.to_cpu()?.to_dtype(DType::F32)?.cpu_slice::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0.0f32, n)),
        }
        shapes.push((id, p.value.dims().to_vec(), n));
    }
    let round = |v: &mut [f32]| v.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
    if bf16 {
        round(&mut flat);
    }
    c.all_reduce_sum(&mut flat)?;
    if bf16 {
        round(&mut flat);
    }
    let mut at = 0;
    for (id, dims, n) in shapes {
        store.set_grad(id, Tensor::from_vec(flat[at..at + n].to_vec(), dims)?)?;
        at += n;
    }
    if at != flat.len() {
        return Err(Error::invalid(
            "all-reduce",
            "gradient sizes changed under the reduction",
        ));
    }
    Ok(())
}

/// The gradients of a device rank, summed over the ranks in buckets of at
/// most `BUCKET_BYTES` while the backward pass goes on: parameters are
/// bucketed last first (the order the backward finishes them), a bucket
/// starts its all-reduce once all its gradients are complete, and buckets
/// start in order, the same on every rank (NCCL needs the ranks' calls in
/// one order). `finish` makes later work wait for them.
pub struct GradBuckets {
    buckets: Vec<Vec<ParamId>>,
    bucket_of: Vec<usize>,
    /// Gradients each bucket still waits for.
    waiting: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    timeout: Option<Duration>,
    /// Sum bf16 copies of the gradients (half the bytes), widened back
    /// into the gradients once the sums are done.
    bf16: bool,
    /// The bf16 copies in flight and whose gradient each becomes.
    copies: Vec<(Buffer, ParamId, usize)>,
}

impl GradBuckets {
    pub fn new(store: &ParamStore, bucket_bytes: usize, timeout: Option<Duration>, bf16: bool) -> Self {
        let ids: Vec<ParamId> = store.iter().map(|(id, _)| id).collect();
        let mut buckets: Vec<Vec<ParamId>> = Vec::new();
        let mut bytes = 0;
        let elem = if bf16 { 2 } else { 4 };
        for &id in ids.iter().rev() {
            let n = elem * store.get(id).value.numel();
            match buckets.last_mut() {
                Some(b) if bytes + n <= bucket_bytes => b.push(id),
                _ => {
                    buckets.push(vec![id]);
                    bytes = 0;
                }
            }
            bytes += n;
        }
        let mut bucket_of = vec![0; ids.len()];
        for (b, members) in buckets.iter().enumerate() {
            members.iter().for_each(|id| bucket_of[id.0] = b);
        }
        GradBuckets {
            waiting: buckets.iter().map(Vec::len).collect(),
            buckets,
            bucket_of,
            next: 0,
            timeout,
            bf16,
            copies: Vec::new(),
        }
    }

    /// How many buckets the gradients make.
    pub fn count(&self) -> usize {
        self.buckets.len()
    }

    /// `id`'s gradient is complete: starts every bucket, in order, that
    /// waits for nothing more.
    pub fn ready(&mut self, id: ParamId, store: &mut ParamStore) -> Result<()> {
        let b = *self
            .bucket_of
            .get(id.0)
            .ok_or_else(|| Error::invalid("all-reduce", "a parameter outside the store"))?;
        self.waiting[b] = self.waiting[b]
            .checked_sub(1)
            .ok_or_else(|| Error::invalid("all-reduce", "a gradient reported complete twice"))?;
        while self.next < self.buckets.len() && self.waiting[self.next] == 0 {
            self.start(self.next, store)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Every bucket started; later work on the device waits for them.
    pub fn finish(self, store: &ParamStore) -> Result<()> {
        if self.next < self.buckets.len() {
            return Err(Error::invalid(
                "all-reduce",
                format!(
                    "{} of {} gradient buckets never completed",
                    self.buckets.len() - self.next,
                    self.buckets.len()
                ),
            ));
        }
        let Some(dev) = store.shared_device() else {
            return Ok(());
        };
        let done = dev.all_reduce_finish(self.timeout);
        let mut widened = Ok(());
        for (copy, id, n) in &self.copies {
            if done.is_ok() && widened.is_ok() {
                widened = match store
                    .get(*id)
                    .grad
                    .as_ref()
                    .and_then(|g| g.device_storage())
                    .and_then(|d| d.f32.get())
                {
                    Some(g) => gpu::widen_bf16(&dev, copy, g, *n),
                    None => Err(Error::invalid("all-reduce", "a gradient went missing")),
                };
            }
            dev.free(copy);
        }
        done.and(widened)
    }

    fn start(&mut self, b: usize, store: &mut ParamStore) -> Result<()> {
        let dev = store
            .shared_device()
            .ok_or_else(|| Error::invalid("all-reduce", "the weights are not on a device"))?;
        // Each gradient in an f32 buffer of its own that nothing else
        // reads, since the sum lands in place.
        for &id in &self.buckets[b] {
            let p = store.get(id);
            let own = match &p.grad {
                None => Some(Tensor::zeros(p.value.dims().to_vec(), DType::F32).to_device(&dev)?),
                Some(g) => {
                    let plain = g
                        .device_storage()
                        .is_some_and(|d| d.f32.get().is_some() && d.bf16.get().is_none());
                    (g.is_shared() || !plain).then(|| gpu::scale(g, 1.0)).transpose()?
                }
            };
            if let Some(g) = own {
                store.set_grad(id, g)?;
            }
        }
        let mut bufs: Vec<(&Buffer, usize)> = Vec::with_capacity(self.buckets[b].len());
        for &id in &self.buckets[b] {
            let g = store
                .get(id)
                .grad
                .as_ref()
                .ok_or_else(|| Error::invalid("all-reduce", "a gradient went missing"))?;
            let buf = g
                .device_storage()
                .and_then(|d| d.f32.get())
                .ok_or_else(|| Error::invalid("all-reduce", "a gradient is not in an f32 device buffer"))?;
            bufs.push((buf, g.numel()));
        }
        if !self.bf16 {
            return dev.all_reduce_start(&bufs, Reduce::SumF32);
        }
        let first = self.copies.len();
        for (&id, (buf, n)) in self.buckets[b].iter().zip(&bufs) {
            let copy = gpu::round_to_bf16(&dev, buf, *n)?;
            self.copies.push((copy, id, *n));
        }
        let copies: Vec<(&Buffer, usize)> = self.copies[first..].iter().map(|(c, _, n)| (c, *n)).collect();
        dev.all_reduce_start(&copies, Reduce::SumBf16)
    }
}

/// A checksum of the weights (CRC-32 of their bytes, in parameter order).
pub fn weights_checksum(store: &ParamStore) -> Result<u32> {
    let mut h = crc32fast::Hasher::new();
    for (_, p) in store.to_cpu()?.iter() {
        h.update(bytemuck::cast_slice(p.value.to_dtype(DType::F32)?.cpu_slice::<f32>()?));
    }
    Ok(h.finalize())
}

/// Refuses to go on when the ranks' weights differ: every rank's checksum
/// is compared (its largest and smallest over the ranks), and a mismatch
/// is an error that names the step.
pub fn check_same_weights(store: &ParamStore, c: &dyn Collective, step: u64) -> Result<()> {
    if c.size() <= 1 {
        return Ok(());
    }
    let sum = u64::from(weights_checksum(store)?);
    let max = c.all_reduce_max(sum)?;
    let min = u64::MAX - c.all_reduce_max(u64::MAX - sum)?;
    if max != min {
        return Err(Error::invalid(
            "pretrain",
            format!(
                "step {step}: the ranks hold different weights (checksums from {min:08x} to {max:08x}; this \
                 rank {sum:08x}); the run cannot go on. Resume from the last checkpoint"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{init_params, ModelConfig};
    use crate::tensor::DType;

    /// Two ranks, as this one sees them: the other's checksum is `other`.
    struct Pair {
        other: u64,
    }

    impl Collective for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn all_reduce_max(&self, value: u64) -> Result<u64> {
            // Either the checksum or its complement, as `check_same_weights` sends.
            let other = if value > u64::from(u32::MAX) {
                u64::MAX - self.other
            } else {
                self.other
            };
            Ok(value.max(other))
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn ranks_with_different_weights_are_stopped_naming_the_step() {
        let store = init_params(&ModelConfig::tiny(), 1, DType::F32).unwrap();
        let sum = u64::from(weights_checksum(&store).unwrap());
        check_same_weights(&store, &Pair { other: sum }, 40).unwrap();
        let e = check_same_weights(&store, &Pair { other: sum ^ 1 }, 40)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 40") && e.contains("different weights"), "{e}");
        let other = init_params(&ModelConfig::tiny(), 2, DType::F32).unwrap();
        assert_ne!(weights_checksum(&other).unwrap() as u64, sum);
    }
}
