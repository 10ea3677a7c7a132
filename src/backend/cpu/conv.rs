//! 3-D convolution on the CPU (the reference for the segmentation decoder,
//! SPEC §14): stride 1, a cubic kernel of side `k`, zero padding `pad` on
//! every side (`pad < k`), cross-correlation as PyTorch's Conv3d.
//!
//! The plain path: the output voxels go in slabs of `SLAB` columns, in
//! parallel; a slab's im2col (one row per input channel and kernel offset)
//! is small enough to stay in cache while its GEMM reads it. The weight
//! gradient sums each slab's `dy · colsᵀ` in slab order (so the result
//! does not depend on the thread count); the input gradient is the forward
//! convolution of `dy` with the kernel flipped and its channels swapped,
//! padded `k − 1 − pad`. In f32 on a CPU with our product kernel the
//! forward and the weight gradient go to conv_implicit.rs instead, which
//! writes no im2col; this path stays for f64, for other CPUs and as the
//! reference those are tested against.

use rayon::prelude::*;

use super::conv_implicit;
use super::gemm::{gemm, MatRef};
use super::CpuFloat;

/// Output voxels per slab.
const SLAB: usize = 1024;

/// Which code computes a convolution: the fastest this CPU and type have,
/// or the plain im2col path (the reference; `bench conv` times both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Fastest,
    Im2col,
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3d {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    /// Input (and, stride 1 with `pad = k / 2`, output) spatial size.
    pub dims: [usize; 3],
    pub k: usize,
    pub pad: usize,
}

impl Conv3d {
    /// The output's spatial size.
    pub fn out_dims(&self) -> [usize; 3] {
        self.dims.map(|n| n + 2 * self.pad + 1 - self.k)
    }

    pub(super) fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    pub(super) fn out_voxels(&self) -> usize {
        self.out_dims().iter().product()
    }

    /// Rows of the im2col matrix: one per (input channel, kernel offset).
    pub(super) fn patch(&self) -> usize {
        self.cin * self.k * self.k * self.k
    }

    /// The im2col matrix of output voxels `c0 .. c0 + w` of one item `x`
    /// (`cin × D × H × W`): `patch × w`, row by row, zero where the kernel
    /// reads padding.
    fn im2col_slab<T: CpuFloat>(&self, x: &[T], c0: usize, w: usize) -> Vec<T> {
        let [d, h, wd] = self.dims;
        let [_, oh, ow] = self.out_dims();
        let (k, pad) = (self.k, self.pad);
        let mut cols = vec![T::zero(); self.patch() * w];
        // The slab's columns as runs along an output row: (first column,
        // output z, output y, first output x, length).
        let mut runs = Vec::new();
        let mut j = 0;
        while j < w {
            let o = c0 + j;
            let (z, y, x0) = (o / (oh * ow), (o / ow) % oh, o % ow);
            let len = (ow - x0).min(w - j);
            runs.push((j, z, y, x0, len));
            j += len;
        }
        for ci in 0..self.cin {
            let plane = &x[ci * self.voxels()..][..self.voxels()];
            for a in 0..k {
                for b in 0..k {
                    for c in 0..k {
                        let row = ((ci * k + a) * k + b) * k + c;
                        for &(j, z, y, x0, len) in &runs {
                            // Input z, y of this run; nothing to copy where they fall in the padding.
                            let (Some(zz), Some(yy)) = ((z + a).checked_sub(pad), (y + b).checked_sub(pad)) else {
                                continue;
                            };
                            if zz >= d || yy >= h {
                                continue;
                            }
                            // Output x reads input x + c − pad: the part inside 0..wd.
                            let lo = pad.saturating_sub(c).max(x0);
                            let hi = (wd + pad).saturating_sub(c).min(x0 + len);
                            if lo < hi {
                                let src = &plane[(zz * h + yy) * wd + lo + c - pad..][..hi - lo];
                                cols[row * w + j + lo - x0..][..hi - lo].copy_from_slice(src);
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    /// The column ranges of the slabs.
    fn slabs(&self) -> Vec<(usize, usize)> {
        let n = self.out_voxels();
        (0..n).step_by(SLAB).map(|c0| (c0, SLAB.min(n - c0))).collect()
    }

    /// `y = w ⊛ x + b`: x is `B × Cin × D × H × W`, w `Cout × Cin × k³`,
    /// the result `B × Cout × D' × H' × W'`.
    pub fn forward<T: CpuFloat>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        self.forward_by(Path::Fastest, x, w, bias)
    }

    /// `forward` by `path`.
    pub fn forward_by<T: CpuFloat>(&self, path: Path, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        let n = self.out_voxels();
        let mut y = vec![T::zero(); self.batch * self.cout * n];
        let fast = match (path, T::as_f32(x), T::as_f32(w), T::as_f32_mut(&mut y)) {
            (Path::Fastest, Some(x), Some(w), Some(y)) => conv_implicit::forward(self, x, w, y),
            _ => false,
        };
        if !fast {
            self.im2col_forward(x, w, &mut y);
        }
        if let Some(b) = bias {
            for out in y.chunks_mut(self.cout * n) {
                for (co, plane) in out.chunks_mut(n).enumerate() {
                    plane.iter_mut().for_each(|v| *v += b[co]);
                }
            }
        }
        y
    }

    /// `y ← w ⊛ x` (no bias) through im2col slabs and `gemm`.
    pub(super) fn im2col_forward<T: CpuFloat>(&self, x: &[T], w: &[T], y: &mut [T]) {
        let (n, p) = (self.out_voxels(), self.patch());
        for (item, out) in y.chunks_mut(self.cout * n).enumerate() {
            let xi = &x[item * self.cin * self.voxels()..][..self.cin * self.voxels()];
            let parts: Vec<Vec<T>> = self
                .slabs()
                .par_iter()
                .map(|&(c0, wd)| {
                    let mut part = vec![T::zero(); self.cout * wd];
                    let cols = self.im2col_slab(xi, c0, wd);
                    gemm(
                        T::one(),
                        MatRef::rm(w, self.cout, p),
                        MatRef::rm(&cols, p, wd),
                        T::zero(),
                        &mut part,
                        wd,
                        1,
                    );
                    part
                })
                .collect();
            for ((c0, wd), part) in self.slabs().into_iter().zip(&parts) {
                for co in 0..self.cout {
                    out[co * n + c0..][..wd].copy_from_slice(&part[co * wd..][..wd]);
                }
            }
        }
    }

    /// The convolution whose forward pass is this one's input gradient:
    /// channels swapped, padding `k − 1 − pad`, over the output's size.
    fn transposed(&self) -> Conv3d {
        Conv3d {
            batch: self.batch,
            cin: self.cout,
            cout: self.cin,
            dims: self.out_dims(),
            k: self.k,
            pad: self.k - 1 - self.pad,
        }
    }

    /// `w` flipped along every kernel axis with its channel axes swapped:
    /// `w'[ci][co][a][b][c] = w[co][ci][k−1−a][k−1−b][k−1−c]`.
    fn flipped<T: CpuFloat>(&self, w: &[T]) -> Vec<T> {
        let k = self.k;
        let k3 = k * k * k;
        let mut out = vec![T::zero(); w.len()];
        for co in 0..self.cout {
            for ci in 0..self.cin {
                for off in 0..k3 {
                    out[(ci * self.cout + co) * k3 + (k3 - 1 - off)] = w[(co * self.cin + ci) * k3 + off];
                }
            }
        }
        out
    }

    /// The gradients `(dx, dw, db)` from the output's `dy`.
    pub fn backward<T: CpuFloat>(&self, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let n = self.out_voxels();
        let mut db = vec![T::zero(); self.cout];
        for g in dy.chunks(self.cout * n) {
            for (co, plane) in g.chunks(n).enumerate() {
                db[co] += plane.iter().fold(T::zero(), |s, &x| s + x);
            }
        }
        let dw = self.weight_grad_by(Path::Fastest, x, dy);
        let dx = self.input_grad_by(Path::Fastest, w, dy);
        (dx, dw, db)
    }

    /// The weight gradient (`Cout × Cin·k³`) from the input and `dy`, by `path`.
    pub fn weight_grad_by<T: CpuFloat>(&self, path: Path, x: &[T], dy: &[T]) -> Vec<T> {
        let mut dw = vec![T::zero(); self.cout * self.patch()];
        let fast = match (path, T::as_f32(x), T::as_f32(dy), T::as_f32_mut(&mut dw)) {
            (Path::Fastest, Some(x), Some(dy), Some(dw)) => conv_implicit::weight_grad(self, x, dy, dw),
            _ => false,
        };
        if !fast {
            self.im2col_weight_grad(x, dy, &mut dw);
        }
        dw
    }

    /// The input gradient from the weights and `dy`, by `path`: the
    /// forward of the transposed convolution.
    pub fn input_grad_by<T: CpuFloat>(&self, path: Path, w: &[T], dy: &[T]) -> Vec<T> {
        self.transposed().forward_by(path, dy, &self.flipped(w), None)
    }

    /// `dw += Σ_items Σ_slabs dy[:, slab] · cols(slab)ᵀ`, in item and slab order.
    pub(super) fn im2col_weight_grad<T: CpuFloat>(&self, x: &[T], dy: &[T], dw: &mut [T]) {
        let (n, p, v) = (self.out_voxels(), self.patch(), self.voxels());
        for item in 0..self.batch {
            let g = &dy[item * self.cout * n..][..self.cout * n];
            let xi = &x[item * self.cin * v..][..self.cin * v];
            let parts: Vec<Vec<T>> = self
                .slabs()
                .par_iter()
                .map(|&(c0, wd)| {
                    let mut part = vec![T::zero(); self.cout * p];
                    let cols = self.im2col_slab(xi, c0, wd);
                    gemm(
                        T::one(),
                        MatRef::strided(g, c0, self.cout, wd, n),
                        MatRef::rm(&cols, p, wd).t(),
                        T::zero(),
                        &mut part,
                        p,
                        1,
                    );
                    part
                })
                .collect();
            for part in &parts {
                dw.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (((i * 7 + seed * 11) % 29) as f64 - 14.0) / 16.0)
            .collect()
    }

    /// The f32 forward and input gradient (our packed kernel on CPUs that
    /// have it, im2col written in its layout) against the f64 reference
    /// path: several slabs, a last slab and panel cut short, output
    /// channels not a multiple of either kernel's strip.
    #[test]
    fn f32_path_matches_the_f64_reference() {
        for (cout, k, pad) in [(11usize, 3usize, 1usize), (5, 3, 0), (9, 1, 0)] {
            let conv = Conv3d {
                batch: 2,
                cin: 3,
                cout,
                dims: [9, 11, 13],
                k,
                pad,
            };
            let x = values(conv.batch * conv.cin * conv.voxels(), 1);
            let w = values(conv.cout * conv.patch(), 2);
            let dy = values(conv.batch * conv.cout * conv.out_voxels(), 3);
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let close = |what: &str, got: &[f32], want: &[f64]| {
                assert_eq!(got.len(), want.len(), "{what}");
                for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{what} {cout} {k} {pad} [{i}]: {g} against {r}"
                    );
                }
            };
            let y = conv.forward(&f32s(&x), &f32s(&w), None);
            close("forward", &y, &conv.forward(&x, &w, None));
            let (dx, dw, _) = conv.backward(&f32s(&x), &f32s(&w), &f32s(&dy));
            let (dx64, dw64, _) = conv.backward(&x, &w, &dy);
            close("dx", &dx, &dx64);
            let scale = dw64.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (&g, &r)) in dw.iter().zip(&dw64).enumerate() {
                assert!(
                    (g as f64 - r).abs() <= 1e-5 * scale,
                    "dw {cout} {k} {pad} [{i}]: {g} against {r}"
                );
            }
        }
    }
}
