//! 3-D convolution on the CPU (the reference for the segmentation decoder,
//! SPEC §14): stride 1, a cubic kernel of side `k`, zero padding `pad` on
//! every side, cross-correlation as PyTorch's Conv3d. Each batch item goes
//! through im2col and one GEMM; the backward pass is the same two GEMMs the
//! other way round and col2im. Plain rather than fast: the device kernels
//! are what is fast, and this is what they are checked against.

use super::gemm::{matmul, MatRef};
use super::CpuFloat;

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

    fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    fn out_voxels(&self) -> usize {
        self.out_dims().iter().product()
    }

    /// Rows of the im2col matrix: one per (input channel, kernel offset).
    fn patch(&self) -> usize {
        self.cin * self.k * self.k * self.k
    }

    /// For output voxel `o` and kernel offset `(a, b, c)`, the input voxel
    /// read, if inside the volume.
    fn source(&self, o: [usize; 3], off: [usize; 3]) -> Option<usize> {
        let [d, h, w] = self.dims;
        let z = (o[0] + off[0]).checked_sub(self.pad).filter(|&z| z < d)?;
        let y = (o[1] + off[1]).checked_sub(self.pad).filter(|&y| y < h)?;
        let x = (o[2] + off[2]).checked_sub(self.pad).filter(|&x| x < w)?;
        Some((z * h + y) * w + x)
    }

    /// Visits every (im2col row, output voxel, input voxel) of one item.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [od, oh, ow] = self.out_dims();
        let k = self.k;
        for ci in 0..self.cin {
            for a in 0..k {
                for b in 0..k {
                    for c in 0..k {
                        let row = ((ci * k + a) * k + b) * k + c;
                        for z in 0..od {
                            for y in 0..oh {
                                for x in 0..ow {
                                    if let Some(src) = self.source([z, y, x], [a, b, c]) {
                                        f(row, (z * oh + y) * ow + x, ci * self.voxels() + src);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn im2col<T: CpuFloat>(&self, x: &[T]) -> Vec<T> {
        let n = self.out_voxels();
        let mut cols = vec![T::zero(); self.patch() * n];
        self.each(|row, o, i| cols[row * n + o] = x[i]);
        cols
    }

    /// `y = w ⊛ x + b`: x is `B × Cin × D × H × W`, w `Cout × Cin × k³`,
    /// the result `B × Cout × D' × H' × W'`.
    pub fn forward<T: CpuFloat>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        let (n, p) = (self.out_voxels(), self.patch());
        let mut y = vec![T::zero(); self.batch * self.cout * n];
        for (item, out) in y.chunks_mut(self.cout * n).enumerate() {
            let cols = self.im2col(&x[item * self.cin * self.voxels()..][..self.cin * self.voxels()]);
            matmul(
                T::one(),
                MatRef::rm(w, self.cout, p),
                MatRef::rm(&cols, p, n),
                T::zero(),
                out,
            );
            if let Some(b) = bias {
                for (co, plane) in out.chunks_mut(n).enumerate() {
                    plane.iter_mut().for_each(|v| *v += b[co]);
                }
            }
        }
        y
    }

    /// The gradients `(dx, dw, db)` from the output's `dy`.
    pub fn backward<T: CpuFloat>(&self, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, p, v) = (self.out_voxels(), self.patch(), self.voxels());
        let mut dx = vec![T::zero(); self.batch * self.cin * v];
        let mut dw = vec![T::zero(); self.cout * p];
        let mut db = vec![T::zero(); self.cout];
        for item in 0..self.batch {
            let g = &dy[item * self.cout * n..][..self.cout * n];
            let cols = self.im2col(&x[item * self.cin * v..][..self.cin * v]);
            // dW += dy · colsᵀ
            matmul(
                T::one(),
                MatRef::rm(g, self.cout, n),
                MatRef::rm(&cols, p, n).t(),
                T::one(),
                &mut dw,
            );
            // dcols = Wᵀ · dy, then scattered back (col2im).
            let mut dcols = vec![T::zero(); p * n];
            matmul(
                T::one(),
                MatRef::rm(w, self.cout, p).t(),
                MatRef::rm(g, self.cout, n),
                T::zero(),
                &mut dcols,
            );
            let dxi = &mut dx[item * self.cin * v..][..self.cin * v];
            self.each(|row, o, i| dxi[i] += dcols[row * n + o]);
            for (co, plane) in g.chunks(n).enumerate() {
                db[co] += plane.iter().fold(T::zero(), |s, &x| s + x);
            }
        }
        (dx, dw, db)
    }
}
