//! Gradients summed over the ranks of a data-parallel run.

use crate::autograd::{ParamId, ParamStore};
use crate::backend::gpu;
use crate::device::{Buffer, Reduce};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The most gradient bytes one all-reduce call carries on a device (NCCL's
/// group of buffers); docs/SCALING.md says how the size was chosen.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sums every parameter's gradient over the ranks; a parameter without a
/// gradient on this rank counts as zeros, so every rank sends the same
/// values. On the host: one collective call for all of them. On a device:
/// the device's own all-reduce (NCCL on a GPU; host copies through MPI on
/// the emulator), in buckets of at most `BUCKET_BYTES`, last parameter
/// first (the order the backward finishes them).
pub fn all_reduce_grads(store: &mut ParamStore, c: &dyn Collective) -> Result<()> {
    if store.shared_device().is_some() {
        return all_reduce_device_grads(store, c.timeout());
    }
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
    c.all_reduce_sum(&mut flat)?;
    let device = store.shared_device();
    let mut at = 0;
    for (id, dims, n) in shapes {
        let g = Tensor::from_vec(flat[at..at + n].to_vec(), dims)?;
        let g = match &device {
            Some(d) => g.to_device(d)?,
            None => g,
        };
        store.set_grad(id, g)?;
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

fn all_reduce_device_grads(store: &mut ParamStore, timeout: Option<std::time::Duration>) -> Result<()> {
    let dev = store
        .shared_device()
        .ok_or_else(|| Error::invalid("all-reduce", "the weights are not on a device"))?;
    // Each gradient in an f32 buffer of its own that nothing else reads,
    // since the sum lands in place.
    let ids: Vec<ParamId> = store.iter().map(|(id, _)| id).collect();
    for &id in ids.iter().rev() {
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
    let mut bucket: Vec<(&Buffer, usize)> = Vec::new();
    let mut bytes = 0;
    for &id in ids.iter().rev() {
        let g = store
            .get(id)
            .grad
            .as_ref()
            .ok_or_else(|| Error::invalid("all-reduce", "a gradient went missing"))?;
        let buf = g
            .device_storage()
            .and_then(|d| d.f32.get())
            .ok_or_else(|| Error::invalid("all-reduce", "a gradient is not in an f32 device buffer"))?;
        if bytes + 4 * g.numel() > BUCKET_BYTES && !bucket.is_empty() {
            dev.all_reduce(&bucket, Reduce::SumF32, timeout)?;
            bucket.clear();
            bytes = 0;
        }
        bucket.push((buf, g.numel()));
        bytes += 4 * g.numel();
    }
    if !bucket.is_empty() {
        dev.all_reduce(&bucket, Reduce::SumF32, timeout)?;
    }
    Ok(())
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
