//! The f32 convolution on a CPU with our product kernel (sgemm.rs): an
//! implicit GEMM over the padded grid, so no im2col is ever written.
//!
//! One item's input is copied once into a grid with a zero border of
//! `pad` (`cin × Dp × Hp × Wp`). Output voxel (z, y, x) gets the grid
//! index q = (z·Hp + y)·Wp + x, and what it reads at channel ci and kernel
//! offset (a, b, c) is grid value q + s, with the shift
//! s = ci·Vp + (a·Hp + b)·Wp + c the same for every voxel. So the im2col
//! row of (ci, a, b, c) over consecutive q is a run of the grid: the
//! kernel reads B's rows straight from it through the table of the
//! K = cin·k³ shifts, in the weight's order. Grid positions between two
//! output rows (x ≥ W') are computed too and dropped: (Wp − W')/Wp of the
//! work, 3–11 % at the decoder's sizes.
//!
//! - Forward, one task per output plane z: C (cout × q) = W (cout × K) ·
//!   B (K × q), W packed in strips once.
//! - Weight gradient, one task per plane: dWᵀ (K × cout) = A (K × q) ·
//!   dYᵀ (q × cout), A's rows read in place from the grid through the
//!   shifts, dYᵀ packed with zeros at the dropped positions; the planes'
//!   sums added in plane order, so the result does not depend on the
//!   thread count.
//! - The input gradient is the forward of the transposed convolution
//!   (conv.rs), so it comes here too.
//!
//! conv.rs keeps the plain im2col path: f64, CPUs without our kernel, and
//! the reference these are tested against.

use rayon::prelude::*;

use super::conv::Conv3d;
use super::gemm::MatRef;
use super::sgemm::{gather_kernel_for, k_blocks, kernel_for, pack_strip, Kernel, Operands, Out, Start, Width, MR_MAX};
use crate::simd::{isa, Isa};

/// Zeros after the grid, so the last tile of a plane (up to one tile past
/// the plane's last voxel) reads inside the buffer.
const SLACK: usize = 64;

/// One item's padded grid and the shifts of the im2col rows.
struct Grid {
    conv: Conv3d,
    /// Padded height and width, and the padded volume of one channel.
    hp: usize,
    wp: usize,
    vp: usize,
    shifts: Vec<isize>,
}

impl Grid {
    fn new(conv: &Conv3d) -> Grid {
        let [d, h, w] = conv.dims.map(|n| n + 2 * conv.pad);
        let (k, vp) = (conv.k, d * h * w);
        let mut shifts = Vec::with_capacity(conv.patch());
        for ci in 0..conv.cin {
            for a in 0..k {
                for b in 0..k {
                    for c in 0..k {
                        shifts.push((ci * vp + (a * h + b) * w + c) as isize);
                    }
                }
            }
        }
        Grid {
            conv: *conv,
            hp: h,
            wp: w,
            vp,
            shifts,
        }
    }

    /// Item `x` (`cin × D × H × W`) inside the zero border, then `SLACK`
    /// zeros; a channel per task.
    fn fill(&self, x: &[f32]) -> Vec<f32> {
        let [d, h, w] = self.conv.dims;
        let pad = self.conv.pad;
        super::par_chunks_new(self.conv.cin * self.vp + SLACK, self.vp, |ci, g: &mut [f32]| {
            if ci >= self.conv.cin {
                return;
            }
            for z in 0..d {
                for y in 0..h {
                    let at = ((z + pad) * self.hp + y + pad) * self.wp + pad;
                    g[at..at + w].copy_from_slice(&x[((ci * d + z) * h + y) * w..][..w]);
                }
            }
        })
    }

    /// The grid positions of output plane z: the first, and how many
    /// (from its first voxel to its last).
    fn plane(&self, z: usize) -> (usize, usize) {
        let [_, oh, ow] = self.conv.out_dims();
        (z * self.hp * self.wp, (oh - 1) * self.wp + ow)
    }
}

/// `y ← w ⊛ x` (no bias) into `y` (`B × Cout × D' × H' × W'`), or false,
/// having done nothing, when this CPU has no kernel.
pub(super) fn forward(conv: &Conv3d, x: &[f32], w: &[f32], y: &mut [f32]) -> bool {
    forward_on(isa(), conv, x, w, y)
}

/// `forward` with the kernel for `isa`, which this CPU must have.
fn forward_on(isa: Isa, conv: &Conv3d, x: &[f32], w: &[f32], y: &mut [f32]) -> bool {
    let Some(kern) = gather_kernel_for(isa, conv.cout) else {
        return false;
    };
    let (kk, n, v) = (conv.patch(), conv.out_voxels(), conv.voxels());
    assert_eq!(x.len(), conv.batch * conv.cin * v, "conv3d: input size");
    assert_eq!(w.len(), conv.cout * kk, "conv3d: weight size");
    assert_eq!(y.len(), conv.batch * conv.cout * n, "conv3d: output size");
    if n == 0 {
        return true;
    }
    let grid = Grid::new(conv);
    let (mr, nr) = (kern.mr, kern.nr);
    // W in strips of mr output channels, each K × mr (channels past cout zero).
    let strips = conv.cout.div_ceil(mr);
    let mut wp = vec![0f32; strips * kk * mr];
    for (s, dst) in wp.chunks_mut(kk * mr).enumerate() {
        pack_strip(&MatRef::rm(w, conv.cout, kk), s * mr, mr, 0, kk, dst);
    }
    let [od, oh, ow] = conv.out_dims();
    for (item, out) in y.chunks_mut(conv.cout * n).enumerate() {
        let g = grid.fill(&x[item * conv.cin * v..][..conv.cin * v]);
        let dst = Shared(out.as_mut_ptr());
        (0..od).into_par_iter().for_each(|z| {
            let (q0, nq) = grid.plane(z);
            let ldc = nq.div_ceil(nr) * nr;
            let mut c = vec![0f32; strips * mr * ldc];
            for (p0, kc) in k_blocks(kk) {
                for t in (0..ldc).step_by(nr) {
                    for s in 0..strips {
                        let op = Operands {
                            kc,
                            a: wp[(s * kk + p0) * mr..].as_ptr(),
                            rows: [0; MR_MAX],
                            ka: mr as isize,
                            b: g[q0 + t..].as_ptr(),
                            b_rows: grid.shifts[p0..].as_ptr(),
                        };
                        let out = Out {
                            c: c[s * mr * ldc + t..].as_mut_ptr(),
                            ldc,
                            alpha: 1.0,
                            start: if p0 == 0 { Start::Zero } else { Start::Add },
                        };
                        // SAFETY: the kernel is this CPU's. The strip holds
                        // kc k steps of mr packed rows; B's row p is
                        // g[q0 + t + shift[p0 + p] ..][..nr], inside g:
                        // q0 + t < q0 + nq + nr, and the shift of the
                        // plane's last voxel lies in the grid, with SLACK ≥
                        // nr zeros after it; the tile's mr rows of nr from
                        // column t lie inside c.
                        unsafe { kern.call(&op, &out) };
                    }
                }
            }
            // Keep the voxels, drop the positions between rows.
            for co in 0..conv.cout {
                for yy in 0..oh {
                    let src = &c[co * ldc + yy * grid.wp..][..ow];
                    // SAFETY: row yy of plane z of channel co, inside this
                    // item's output; no other task writes plane z.
                    unsafe {
                        let at = dst.at(co * n + (z * oh + yy) * ow);
                        std::ptr::copy_nonoverlapping(src.as_ptr(), at, ow);
                    }
                }
            }
        });
    }
    true
}

/// The output's pointer, shared by the plane tasks (each writes its own plane).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used to hand disjoint planes of the output to tasks.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Element `i`.
    ///
    /// # Safety
    /// `i` lies inside the output.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// The weight gradient `dw` (`Cout × Cin·k³`, overwritten) from the input
/// `x` and the output's gradient `dy`, or false, having done nothing, when
/// this CPU has no kernel.
pub(super) fn weight_grad(conv: &Conv3d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> bool {
    weight_grad_on(isa(), conv, x, dy, dw)
}

/// `weight_grad` with the kernel for `isa`, which this CPU must have.
fn weight_grad_on(isa: Isa, conv: &Conv3d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> bool {
    let Some(kern) = kernel_for(isa, Width::Narrow) else {
        return false;
    };
    let (kk, n, v) = (conv.patch(), conv.out_voxels(), conv.voxels());
    assert_eq!(x.len(), conv.batch * conv.cin * v, "conv3d: input size");
    assert_eq!(dy.len(), conv.batch * conv.cout * n, "conv3d: output gradient size");
    assert_eq!(dw.len(), conv.cout * kk, "conv3d: weight gradient size");
    let grid = Grid::new(conv);
    let (mr, nr) = (kern.mr, kern.nr);
    let ldc = conv.cout.div_ceil(nr) * nr;
    let rows = kk.div_ceil(mr) * mr;
    let mut sum = vec![0f32; rows * ldc];
    let od = conv.out_dims()[0];
    for item in 0..conv.batch {
        let g = grid.fill(&x[item * conv.cin * v..][..conv.cin * v]);
        let gi = &dy[item * conv.cout * n..][..conv.cout * n];
        let parts: Vec<Vec<f32>> = (0..od)
            .into_par_iter()
            .map(|z| plane_weight_grad(&grid, kern, &g, gi, z, rows, ldc))
            .collect();
        for part in &parts {
            sum.iter_mut().zip(part).for_each(|(s, &p)| *s += p);
        }
    }
    for (co, dst) in dw.chunks_mut(kk).enumerate() {
        for (p, d) in dst.iter_mut().enumerate() {
            *d = sum[p * ldc + co];
        }
    }
    true
}

/// Plane z's share of dWᵀ (`rows × ldc`, rows past K and columns past
/// cout zero or unused): `A · dYᵀ` over the plane's grid positions.
fn plane_weight_grad(grid: &Grid, kern: Kernel, g: &[f32], dy: &[f32], z: usize, rows: usize, ldc: usize) -> Vec<f32> {
    let conv = &grid.conv;
    let (mr, nr) = (kern.mr, kern.nr);
    let [_, oh, ow] = conv.out_dims();
    let (q0, nq) = grid.plane(z);
    let panels = ldc / nr;
    // dYᵀ of the plane in panels of nr channels, nq × nr each, zero at the
    // dropped positions and past the last channel.
    let mut bt = vec![0f32; panels * nq * nr];
    for co in 0..conv.cout {
        let (pj, j) = (co / nr, co % nr);
        let src = &dy[co * conv.out_voxels() + z * oh * ow..][..oh * ow];
        for (yy, row) in src.chunks(ow).enumerate() {
            for (xx, &val) in row.iter().enumerate() {
                bt[(pj * nq + yy * grid.wp + xx) * nr + j] = val;
            }
        }
    }
    let kk = grid.shifts.len();
    let mut c = vec![0f32; rows * ldc];
    for (p0, kc) in k_blocks(nq) {
        for r0 in (0..kk).step_by(mr) {
            // Rows past K repeat the last shift; their sums land in rows
            // nobody reads.
            let mut shift = [0isize; MR_MAX];
            for (r, s) in shift.iter_mut().take(mr).enumerate() {
                *s = grid.shifts[(r0 + r).min(kk - 1)];
            }
            for pj in 0..panels {
                let op = Operands {
                    kc,
                    a: g[q0 + p0..].as_ptr(),
                    rows: shift,
                    ka: 1,
                    b: bt[(pj * nq + p0) * nr..].as_ptr(),
                    b_rows: std::ptr::null(),
                };
                let out = Out {
                    c: c[r0 * ldc + pj * nr..].as_mut_ptr(),
                    ldc,
                    alpha: 1.0,
                    start: if p0 == 0 { Start::Zero } else { Start::Add },
                };
                // SAFETY: the kernel is this CPU's. A's row r reads
                // g[q0 + shift[r] + p0 ..][..kc], inside the plane's reach
                // of the grid; B's panel holds kc rows of nr from p0; the
                // tile's mr rows of nr lie inside c (rows ≥ r0 + mr).
                unsafe { kern.call(&op, &out) };
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7 + seed * 11) % 29) as f32 - 14.0) / 16.0)
            .collect()
    }

    /// Forward and weight gradient with each kernel this CPU has, against
    /// conv.rs's im2col path in f64: planes cut short by every tile width,
    /// output channels that fill no strip or panel evenly (so both AVX-512
    /// gathering kernels run), K over `KC_MAX` (cin·k³ = 1377 at cin 51)
    /// and planes longer than it, a 1³ kernel, with and without padding.
    #[test]
    fn matches_the_im2col_reference() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2Fma]
            .into_iter()
            .filter(|&i| i <= crate::simd::detected())
            .collect();
        if isas.is_empty() {
            eprintln!("conv_implicit: this CPU has no kernel of ours; nothing to check");
        }
        for isa in isas {
            for (cin, cout, dims, k, pad) in [
                (3usize, 11usize, [5usize, 7usize, 9usize], 3usize, 1usize),
                (2, 5, [6, 5, 7], 3, 0),
                (4, 9, [3, 4, 5], 1, 0),
                (51, 20, [3, 3, 4], 3, 1),
                (2, 3, [2, 40, 33], 3, 1),
            ] {
                let conv = Conv3d {
                    batch: 2,
                    cin,
                    cout,
                    dims,
                    k,
                    pad,
                };
                let what = format!("{} {cin}→{cout} {dims:?} k {k} pad {pad}", isa.name());
                let x = values(conv.batch * cin * conv.voxels(), 1);
                let w = values(cout * conv.patch(), 2);
                let dy = values(conv.batch * cout * conv.out_voxels(), 3);
                let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();

                let mut y = vec![f32::NAN; conv.batch * cout * conv.out_voxels()];
                assert!(forward_on(isa, &conv, &x, &w, &mut y));
                let mut want = vec![0f64; y.len()];
                conv.im2col_forward(&f64s(&x), &f64s(&w), &mut want);
                for (i, (&g, &r)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "forward {what} [{i}]: {g} against {r}"
                    );
                }

                let mut dw = vec![f32::NAN; cout * conv.patch()];
                assert!(weight_grad_on(isa, &conv, &x, &dy, &mut dw));
                let mut want = vec![0f64; dw.len()];
                conv.im2col_weight_grad(&f64s(&x), &f64s(&dy), &mut want);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (i, (&g, &r)) in dw.iter().zip(&want).enumerate() {
                    assert!((g as f64 - r).abs() <= 1e-5 * scale, "dw {what} [{i}]: {g} against {r}");
                }
            }
        }
    }
}
