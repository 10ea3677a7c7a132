//! `resize3d`: trilinear resizing of `B × C × D × H × W` volumes to a given
//! size, as PyTorch's `interpolate(mode="trilinear", align_corners=False)`
//! (the decoder's ×2 upsampling and the skips' resizing, SPEC §14).

use rayon::prelude::*;

use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// For each output index along one axis: the two input indices it reads
/// and the weight of the second (align_corners false: source position
/// `(o + ½)·in/out − ½`, clamped at 0).
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

impl Tape {
    /// `x` resized trilinearly to `size` (D, H, W).
    pub fn resize3d(&self, x: &Var, size: [usize; 3]) -> Result<Var> {
        const OP: &str = "resize3d";
        let xs = x.shape().clone();
        if xs.rank() != 5 || xs.dims()[2..].contains(&0) || size.contains(&0) {
            return Err(Error::bad_shape(
                OP,
                &xs,
                format!("the input must be B × C × D × H × W, non-empty, and the size {size:?} positive"),
            ));
        }
        if on_device(&[x]) {
            let dims = xs.dims().to_vec();
            return Ok(self.record(
                crate::backend::gpu::resize3d(x.value(), size)?,
                &[x],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(crate::backend::gpu::resize3d_backward(g, &dims)?)])
                }),
            ));
        }
        let d = xs.dims();
        let (planes, inp) = (d[0] * d[1], [d[2], d[3], d[4]]);
        let t = [0, 1, 2].map(|a| taps(inp[a], size[a]));
        let (iv, ov) = (inp.iter().product::<usize>(), size.iter().product::<usize>());
        // Each output voxel: its eight (input voxel, weight) pairs.
        let corners = move |o: [usize; 3]| {
            let (z, y, x) = (t[0][o[0]], t[1][o[1]], t[2][o[2]]);
            let mut out = [(0usize, 0.0f64); 8];
            for (n, c) in out.iter_mut().enumerate() {
                let (iz, wz) = if n & 4 == 0 { (z.0, 1.0 - z.2) } else { (z.1, z.2) };
                let (iy, wy) = if n & 2 == 0 { (y.0, 1.0 - y.2) } else { (y.1, y.2) };
                let (ix, wx) = if n & 1 == 0 { (x.0, 1.0 - x.2) } else { (x.1, x.2) };
                *c = ((iz * inp[1] + iy) * inp[2] + ix, wz * wy * wx);
            }
            out
        };
        let index = move |k: usize| [k / (size[1] * size[2]), (k / size[2]) % size[1], k % size[2]];
        let xv = x.value().to_f64_vec()?;
        // Plane by plane in parallel: each output plane reads only its own
        // input plane.
        let mut y = vec![0.0; planes * ov];
        y.par_chunks_mut(ov).zip(xv.par_chunks(iv)).for_each(|(y, x)| {
            for (k, y) in y.iter_mut().enumerate() {
                *y = corners(index(k)).iter().map(|&(i, w)| w * x[i]).sum();
            }
        });
        let dtype = x.value().dtype();
        let out_shape = vec![d[0], d[1], size[0], size[1], size[2]];
        Ok(self.record(
            Tensor::from_f64_slice(&y, out_shape, dtype)?,
            &[x],
            backward_fn(OP, move |g, _| {
                let g = g.to_f64_vec()?;
                let mut dx = vec![0.0; planes * iv];
                dx.par_chunks_mut(iv).zip(g.par_chunks(ov)).for_each(|(dx, g)| {
                    for (k, &g) in g.iter().enumerate() {
                        for (i, w) in corners(index(k)) {
                            dx[i] += w * g;
                        }
                    }
                });
                Ok(vec![Some(Tensor::from_f64_slice(&dx, xs.clone(), dtype)?)])
            }),
        ))
    }
}
