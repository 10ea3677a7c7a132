use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::{elementwise, fused};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::with_dtype;
use crate::tensor::{Element, Tensor};

impl Tape {
    /// Inverted dropout: element `i` is kept when value `i` of `rng` (uniform)
    /// is ≥ `p`, and kept values are scaled by `1/(1 − p)`. The mask depends
    /// only on (seed, stream, index), never on dtype or backend.
    pub fn dropout(&self, x: &Var, p: f64, rng: RngStream) -> Result<Var> {
        const OP: &str = "dropout";
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(OP, format!("probability must be in [0, 1), got {p}")));
        }
        if p == 0.0 {
            return Ok(x.clone());
        }
        if on_device(&[x]) {
            return Ok(self.record(
                gpu::dropout(x.value(), p, rng)?,
                &[x],
                backward_fn(OP, move |g, _| Ok(vec![Some(gpu::dropout(g, p, rng)?)])),
            ));
        }
        if let Ok(xs) = x.value().cpu_slice::<f32>() {
            // f32: the mask drawn as it is applied, and again in the backward
            // (the same bits as the stored-mask path below).
            return Ok(self.record(
                Tensor::from_vec(fused::dropout(xs, p, rng), x.shape())?,
                &[x],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(Tensor::from_vec(
                        fused::dropout(g.cpu_slice::<f32>()?, p, rng),
                        g.shape(),
                    )?)])
                }),
            ));
        }
        let n = x.value().numel();
        let mut u = vec![0.0f32; n];
        rng.fill_uniform(0, &mut u);
        let keep = 1.0 / (1.0 - p);
        let dtype = x.value().dtype();
        let (y, mask) = with_dtype!(dtype, T => {
            use rayon::prelude::*;
            let mask: Vec<T> = u.par_iter().map(|&u| T::from_f64(if (u as f64) >= p { keep } else { 0.0 })).collect();
            let y = elementwise::apply_mask(x.value().cpu_slice::<T>()?, &mask);
            (Tensor::from_vec(y, x.shape())?, Tensor::from_vec(mask, x.shape())?)
        });
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    elementwise::apply_mask(g.cpu_slice::<T>()?, mask.cpu_slice::<T>()?),
                    g.shape(),
                )?)]))
            }),
        ))
    }
}
