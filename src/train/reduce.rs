//! Gradients summed over the ranks of a data-parallel run.

use crate::autograd::ParamStore;
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Sums every parameter's gradient over the ranks (one call for all of
/// them; a parameter without a gradient on this rank counts as zeros, so
/// every rank sends the same number of values). On a device the gradients
/// go through host copies.
pub fn all_reduce_grads(store: &mut ParamStore, c: &dyn Collective) -> Result<()> {
    if c.size() <= 1 {
        return Ok(());
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
