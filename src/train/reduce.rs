//! Gradients summed over the ranks of a data-parallel run.

use crate::autograd::ParamStore;
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
            Some(g) => flat.extend_from_slice(&g.to_f64_vec()?.iter().map(|&v| v as f32).collect::<Vec<_>>()),
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
