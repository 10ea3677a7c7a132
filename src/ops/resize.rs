//! `resize3d`: trilinear resizing of `B × C × D × H × W` volumes to a given
//! size, as PyTorch's `interpolate(mode="trilinear", align_corners=False)`
//! (the decoder's ×2 upsampling and the skips' resizing, SPEC §14).

use rayon::prelude::*;

use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::CpuFloat;
use crate::error::{Error, Result};
use crate::tensor::{with_dtype, Element, Tensor};

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

/// One axis of the resize: `src` read as `outer × n × inner`, and output
/// index `t` along the axis the two-tap mix `(1 − w)·src[i0] + w·src[i1]`
/// of `taps[t]`; the result is `outer × taps.len() × inner`.
fn lerp_axis(src: &[f64], outer: usize, n: usize, inner: usize, taps: &[(usize, usize, f64)]) -> Vec<f64> {
    let m = taps.len();
    let mut out = vec![0.0; outer * m * inner];
    for (s, d) in src.chunks(n * inner).zip(out.chunks_mut(m * inner)).take(outer) {
        for (d, &(i0, i1, w)) in d.chunks_mut(inner).zip(taps) {
            let (a, b) = (&s[i0 * inner..][..inner], &s[i1 * inner..][..inner]);
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = (1.0 - w) * a + w * b;
            }
        }
    }
    out
}

/// `lerp_axis` transposed: `g` (`outer × taps.len() × inner`) spread back
/// onto `outer × n × inner`, taps in order.
fn lerp_axis_adjoint(g: &[f64], outer: usize, n: usize, inner: usize, taps: &[(usize, usize, f64)]) -> Vec<f64> {
    let m = taps.len();
    let mut out = vec![0.0; outer * n * inner];
    for (g, d) in g.chunks(m * inner).zip(out.chunks_mut(n * inner)).take(outer) {
        for (g, &(i0, i1, w)) in g.chunks(inner).zip(taps) {
            for (k, &v) in g.iter().enumerate() {
                d[i0 * inner + k] += (1.0 - w) * v;
                d[i1 * inner + k] += w * v;
            }
        }
    }
    out
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
        let dtype = x.value().dtype();
        let out_shape = vec![d[0], d[1], size[0], size[1], size[2]];
        // Plane by plane in parallel (each output plane reads only its own
        // input plane), one axis at a time in f64: W, then H, then D.
        let y = with_dtype!(dtype, T => {
            let xv = x.value().cpu_slice::<T>()?;
            let mut y = vec![T::zero(); planes * ov];
            y.par_chunks_mut(ov).zip(xv.par_chunks(iv)).for_each(|(y, x)| {
                let [d, h, w] = inp;
                let x: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
                let along_w = lerp_axis(&x, d * h, w, 1, &t[2]);
                let along_h = lerp_axis(&along_w, d, h, size[2], &t[1]);
                let along_d = lerp_axis(&along_h, 1, d, size[1] * size[2], &t[0]);
                y.iter_mut().zip(&along_d).for_each(|(y, &v)| *y = T::from_f64(v));
            });
            Tensor::from_vec(y, out_shape)?
        });
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                let dx = with_dtype!(dtype, T => {
                    let g = g.cpu_slice::<T>()?;
                    let mut dx = vec![T::zero(); planes * iv];
                    dx.par_chunks_mut(iv).zip(g.par_chunks(ov)).for_each(|(dx, g)| {
                        // The forward's passes transposed, in reverse order.
                        let [d, h, w] = inp;
                        let g: Vec<f64> = g.iter().map(|v| v.to_f64()).collect();
                        let along_h = lerp_axis_adjoint(&g, 1, d, size[1] * size[2], &t[0]);
                        let along_w = lerp_axis_adjoint(&along_h, d, h, size[2], &t[1]);
                        let along_x = lerp_axis_adjoint(&along_w, d * h, w, 1, &t[2]);
                        dx.iter_mut().zip(&along_x).for_each(|(dx, &v)| *dx = T::from_f64(v));
                    });
                    Tensor::from_vec(dx, xs.clone())?
                });
                Ok(vec![Some(dx)])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One plane through the three passes against the definition: each
    /// output voxel the weighted sum of its eight corners; and the adjoint
    /// passes against the forward (`⟨A·x, g⟩ = ⟨x, Aᵀ·g⟩`).
    #[test]
    fn separable_passes_are_the_eight_corner_sum() {
        for (inp, size) in [
            ([3usize, 4usize, 5usize], [6usize, 8usize, 10usize]),
            ([4, 1, 7], [2, 3, 3]),
            ([1, 2, 2], [2, 1, 4]),
        ] {
            let [d, h, w] = inp;
            let t = [0, 1, 2].map(|a| taps(inp[a], size[a]));
            let x: Vec<f64> = (0..d * h * w).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
            let along_w = lerp_axis(&x, d * h, w, 1, &t[2]);
            let along_h = lerp_axis(&along_w, d, h, size[2], &t[1]);
            let y = lerp_axis(&along_h, 1, d, size[1] * size[2], &t[0]);
            let mut k = 0;
            for &(z0, z1, wz) in &t[0] {
                for &(y0, y1, wy) in &t[1] {
                    for &(x0, x1, wx) in &t[2] {
                        let at = |z: usize, yy: usize, xx: usize| x[(z * h + yy) * w + xx];
                        let mut want = 0.0;
                        for (z, fz) in [(z0, 1.0 - wz), (z1, wz)] {
                            for (yy, fy) in [(y0, 1.0 - wy), (y1, wy)] {
                                for (xx, fx) in [(x0, 1.0 - wx), (x1, wx)] {
                                    want += fz * fy * fx * at(z, yy, xx);
                                }
                            }
                        }
                        assert!(
                            (y[k] - want).abs() < 1e-12,
                            "{inp:?} → {size:?} [{k}]: {} against {want}",
                            y[k]
                        );
                        k += 1;
                    }
                }
            }
            let g: Vec<f64> = (0..y.len()).map(|i| ((i * 11 % 17) as f64 - 8.0) / 5.0).collect();
            let back_h = lerp_axis_adjoint(&g, 1, d, size[1] * size[2], &t[0]);
            let back_w = lerp_axis_adjoint(&back_h, d, h, size[2], &t[1]);
            let dx = lerp_axis_adjoint(&back_w, d * h, w, 1, &t[2]);
            let lhs: f64 = y.iter().zip(&g).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-10 * (1.0 + lhs.abs()),
                "{inp:?} → {size:?}: {lhs} against {rhs}"
            );
        }
    }
}
