//! Noise injection (MODEL.md §3): `X̃ = X + σ·ε`, ε standard normal per voxel, no clipping.

use crate::error::Result;
use crate::rng::RngStream;
use crate::tensor::with_dtype;
use crate::tensor::{Element, Tensor};

/// Adds `sigma·ε` to every value; value `i` of the flattened batch uses
/// normal number `i` of `rng`. `sigma = 0` returns the input unchanged.
pub fn add_noise(x: &Tensor, sigma: f64, rng: RngStream) -> Result<Tensor> {
    if sigma == 0.0 {
        return Ok(x.clone());
    }
    let mut eps = vec![0.0f32; x.numel()];
    rng.fill_normal(0, &mut eps);
    with_dtype!(x.dtype(), T => {
        use rayon::prelude::*;
        let v: Vec<T> = x
            .cpu_slice::<T>()?
            .par_iter()
            .zip(eps.par_iter())
            .map(|(&v, &e)| T::from_f64(v.to_f64() + sigma * e as f64))
            .collect();
        Tensor::from_vec(v, x.shape())
    })
}
