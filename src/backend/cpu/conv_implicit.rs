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
//! - Weight gradient, a task per plane (a few planes on small grids):
//!   dWᵀ[kk][co] = Σ_q dY[co][q] · grid[q + shift kk], both rows read
//!   along q, so every output channel and weight column keeps 16 running
//!   sums (one per lane) over the task's positions in blocks whose dY
//!   stays in L1, its lanes added up at the end; dY has zeros at the
//!   dropped positions. With few output channels this keeps the FMA
//!   units busier than a GEMM whose narrow side is the output channels.
//!   The tasks' sums are added in task order, and the tasks depend on
//!   the shape alone, so the result does not depend on the thread count.
//! - The input gradient is the forward of the transposed convolution
//!   (conv.rs), so it comes here too.
//!
//! conv.rs keeps the plain im2col path: f64, CPUs without our kernel, and
//! the reference these are tested against.

use rayon::prelude::*;

use super::conv::Conv3d;
use super::gemm::MatRef;
use super::sgemm::{gather_kernel_for, k_blocks, pack_strip, Operands, Out, Start, MR_MAX};
use super::Disjoint;
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

    /// The grid positions of output planes `zs`: the first, and how many
    /// (from the first plane's first voxel to the last plane's last).
    fn planes(&self, zs: std::ops::Range<usize>) -> (usize, usize) {
        let [_, oh, ow] = self.conv.out_dims();
        let plane = self.hp * self.wp;
        (zs.start * plane, (zs.len() - 1) * plane + (oh - 1) * self.wp + ow)
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
        let dst = Disjoint::new(out);
        (0..od).into_par_iter().for_each(|z| {
            let (q0, nq) = grid.planes(z..z + 1);
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
                    // SAFETY: row yy of plane z of channel co; no other
                    // task writes plane z.
                    let row = unsafe { dst.part(co * n + (z * oh + yy) * ow, ow) };
                    row.copy_from_slice(&c[co * ldc + yy * grid.wp..][..ow]);
                }
            }
        });
    }
    true
}

/// The weight gradient `dw` (`Cout × Cin·k³`, overwritten) from the input
/// `x` and the output's gradient `dy`, or false, having done nothing, when
/// this CPU has no tile or the convolution has more than `DW_COUT_MAX`
/// output channels (where a GEMM over them does as well or better).
pub(super) fn weight_grad(conv: &Conv3d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> bool {
    weight_grad_on(isa(), conv, x, dy, dw)
}

/// `weight_grad` with the tile for `isa`, which this CPU must have.
fn weight_grad_on(isa: Isa, conv: &Conv3d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> bool {
    let Some(tile) = WTile::of(isa) else {
        return false;
    };
    if conv.cout > DW_COUT_MAX {
        return false;
    }
    let (kk, n, v) = (conv.patch(), conv.out_voxels(), conv.voxels());
    assert_eq!(x.len(), conv.batch * conv.cin * v, "conv3d: input size");
    assert_eq!(dy.len(), conv.batch * conv.cout * n, "conv3d: output gradient size");
    assert_eq!(dw.len(), conv.cout * kk, "conv3d: weight gradient size");
    let grid = Grid::new(conv);
    // dWᵀ (K × cout), summed item by item and plane by plane.
    let mut sum = vec![0f32; kk * conv.cout];
    // Tasks of whole planes, at least `TASK_POSITIONS` grid positions
    // each where the planes allow (fewer lane totals per tile on small
    // grids); the split depends on the shape alone.
    let od = conv.out_dims()[0];
    let per_task = TASK_POSITIONS.div_ceil(grid.hp * grid.wp).clamp(1, od);
    let tasks: Vec<std::ops::Range<usize>> = (0..od).step_by(per_task).map(|z| z..(z + per_task).min(od)).collect();
    for item in 0..conv.batch {
        let g = grid.fill(&x[item * conv.cin * v..][..conv.cin * v]);
        let gi = &dy[item * conv.cout * n..][..conv.cout * n];
        let parts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|zs| planes_weight_grad(&grid, tile, &g, gi, zs.clone()))
            .collect();
        for part in &parts {
            sum.iter_mut().zip(part).for_each(|(s, &p)| *s += p);
        }
    }
    for (co, dst) in dw.chunks_mut(kk).enumerate() {
        for (p, d) in dst.iter_mut().enumerate() {
            *d = sum[p * conv.cout + co];
        }
    }
    true
}

/// Lanes of the weight gradient's running sums. Both instruction sets
/// keep 16 (AVX2 in two registers) and add them up in the same order
/// (`lane_total`), so they give the same bits.
const LANES: usize = 16;
/// Grid positions per block of the weight gradient: a block of dY's rows
/// (a few KiB per channel) stays in L1 while every tile passes over it.
const QB: usize = 512;
/// The most output channels the weight gradient is computed with here:
/// past it, im2col and a GEMM whose rows are the channels are as fast on
/// AVX-512 and twice as fast on AVX2 (`bench conv`, docs/DESIGN.md).
const DW_COUT_MAX: usize = 24;
/// Output channels whose block of dY (`QB` positions each, 2 KiB) the
/// weight gradient keeps in L1 at a time.
const CO_GROUP: usize = 12;
/// Grid positions a weight-gradient task covers at least, where the
/// planes allow.
const TASK_POSITIONS: usize = 1024;
/// The most running sums a weight-gradient tile keeps.
const WTILE_MAX: usize = 18;

/// One tile of the weight gradient: for `m < mr`, `j < nk`, lanes
/// `l < LANES`, `carry[(m·nk + j)·LANES + l] += Σ_c dy[m·ldy + c·LANES +
/// l] · g[j][c·LANES + l]` over `chunks` chunks (from zero when `first`).
#[derive(Clone, Copy)]
struct WTile {
    mr: usize,
    nk: usize,
    run: unsafe fn(&WOperands),
}

/// What one weight-gradient tile reads and where its running sums live
/// (`WTILE_MAX · LANES` values at `carry`).
struct WOperands {
    dy: *const f32,
    ldy: usize,
    g: [*const f32; 6],
    chunks: usize,
    carry: *mut f32,
    first: bool,
}

impl WTile {
    /// The tile for `isa`: 3 output channels × 6 weight columns on
    /// AVX-512 (18 accumulators), 2 × 3 on AVX2; none without AVX2.
    fn of(isa: Isa) -> Option<WTile> {
        #[cfg(target_arch = "x86_64")]
        {
            match isa {
                Isa::Avx512 => Some(WTile {
                    mr: 3,
                    nk: 6,
                    run: wtile_avx512,
                }),
                Isa::Avx2Fma => Some(WTile {
                    mr: 2,
                    nk: 3,
                    run: wtile_avx2,
                }),
                Isa::Baseline => None,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            None
        }
    }
}

/// Planes `zs`' share of dWᵀ (`K × cout`): for each block of their grid
/// positions, every (output channel, weight column) tile over the block.
fn planes_weight_grad(grid: &Grid, tile: WTile, g: &[f32], dy: &[f32], zs: std::ops::Range<usize>) -> Vec<f32> {
    let conv = &grid.conv;
    let (mr, nk, cout, kk) = (tile.mr, tile.nk, conv.cout, grid.shifts.len());
    let [_, oh, ow] = conv.out_dims();
    let (q0, nq) = grid.planes(zs.clone());
    let len = nq.div_ceil(LANES) * LANES;
    // dY of the planes at their grid positions, zero at the dropped ones,
    // past the last position and in the channels past cout.
    let rows = cout.div_ceil(mr) * mr;
    let mut dyp = vec![0f32; rows * len];
    for co in 0..cout {
        for (i, z) in zs.clone().enumerate() {
            for yy in 0..oh {
                let at = co * len + i * grid.hp * grid.wp + yy * grid.wp;
                dyp[at..][..ow].copy_from_slice(&dy[co * conv.out_voxels() + (z * oh + yy) * ow..][..ow]);
            }
        }
    }
    // The running sums: every tile's own between blocks when there are
    // several, else one slot that each tile uses in turn.
    let slot = WTILE_MAX * LANES;
    let tiles = kk.div_ceil(nk) * (rows / mr);
    let blocks = len.div_ceil(QB);
    let mut carry = vec![0f32; if blocks > 1 { tiles * slot } else { slot }];
    let mut part = vec![0f32; kk * cout];
    // Output channels a group at a time, so the group's block of dY stays
    // in L1 while the grid rows change.
    let group = (CO_GROUP / mr).max(1) * mr;
    for b0 in (0..len).step_by(QB) {
        let chunks = QB.min(len - b0) / LANES;
        let last = b0 + QB >= len;
        for g0 in (0..rows).step_by(group) {
            for (ks, k0) in (0..kk).step_by(nk).enumerate() {
                // Columns past K repeat the last; their sums are not kept.
                let g_rows: [*const f32; 6] =
                    std::array::from_fn(|j| g[q0 + b0 + grid.shifts[(k0 + j).min(kk - 1)] as usize..].as_ptr());
                for c0 in (g0..rows.min(g0 + group)).step_by(mr) {
                    let at = if blocks > 1 {
                        (ks * (rows / mr) + c0 / mr) * slot
                    } else {
                        0
                    };
                    let op = WOperands {
                        dy: dyp[c0 * len + b0..].as_ptr(),
                        ldy: len,
                        g: g_rows,
                        chunks,
                        carry: carry[at..at + slot].as_mut_ptr(),
                        first: b0 == 0,
                    };
                    // SAFETY: the tile is this CPU's. dY's mr rows from c0
                    // reach b0 + chunks·LANES ≤ len within dyp; grid row j
                    // reads g[q0 + shift + b0 ..][..chunks·LANES], which
                    // ends at most LANES − 1 past the last voxel's read,
                    // inside the SLACK zeros; the carry slot holds
                    // WTILE_MAX · LANES values.
                    unsafe { (tile.run)(&op) };
                    if last {
                        for m in 0..mr.min(cout - c0) {
                            for j in 0..nk.min(kk - k0) {
                                let lanes = &carry[at + (m * nk + j) * LANES..][..LANES];
                                part[(k0 + j) * cout + c0 + m] += lane_total(lanes);
                            }
                        }
                    }
                }
            }
        }
    }
    part
}

/// The sum of 16 lanes in a fixed order: lane l + lane l + 8, then the
/// same with 4, 2 and 1.
fn lane_total(v: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    for (l, x) in s.iter_mut().enumerate() {
        *x = v[l] + v[l + 8];
    }
    for w in [4, 2, 1] {
        for l in 0..w {
            s[l] += s[l + w];
        }
    }
    s[0]
}

/// The AVX-512 weight-gradient tile: 3 × 6, 18 accumulators of 16 lanes.
///
/// # Safety
/// AVX-512F present; `op`'s rows hold `chunks · 16` values each and its
/// carry `3 · 6 · 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wtile_avx512(op: &WOperands) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 6]; 3];
    if !op.first {
        for (m, acc) in acc.iter_mut().enumerate() {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(op.carry.add((m * 6 + j) * LANES));
            }
        }
    }
    for c in 0..op.chunks {
        let p = c * LANES;
        let mut x = [_mm512_setzero_ps(); 6];
        for (x, g) in x.iter_mut().zip(&op.g) {
            *x = _mm512_loadu_ps(g.add(p));
        }
        for (m, acc) in acc.iter_mut().enumerate() {
            let d = _mm512_loadu_ps(op.dy.add(m * op.ldy + p));
            for (acc, &x) in acc.iter_mut().zip(&x) {
                *acc = _mm512_fmadd_ps(d, x, *acc);
            }
        }
    }
    for (m, acc) in acc.iter().enumerate() {
        for (j, &acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.carry.add((m * 6 + j) * LANES), acc);
        }
    }
}

/// The AVX2 weight-gradient tile: 2 × 3, each accumulator 16 lanes in two
/// registers, the chunk's two halves one after the other (12
/// accumulators, 3 grid rows and a dY row in the 16 registers).
///
/// # Safety
/// AVX2 and FMA present; `op`'s rows hold `chunks · 16` values each and
/// its carry `2 · 3 · 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wtile_avx2(op: &WOperands) {
    use std::arch::x86_64::*;
    // acc[h][m][j]: lanes 8h .. 8h + 8 of (channel m, column j).
    let mut acc = [[[_mm256_setzero_ps(); 3]; 2]; 2];
    if !op.first {
        for (h, acc) in acc.iter_mut().enumerate() {
            for (m, acc) in acc.iter_mut().enumerate() {
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_loadu_ps(op.carry.add((m * 3 + j) * LANES + 8 * h));
                }
            }
        }
    }
    for c in 0..op.chunks {
        for (h, acc) in acc.iter_mut().enumerate() {
            let p = c * LANES + 8 * h;
            let mut x = [_mm256_setzero_ps(); 3];
            for (x, g) in x.iter_mut().zip(&op.g) {
                *x = _mm256_loadu_ps(g.add(p));
            }
            for (m, acc) in acc.iter_mut().enumerate() {
                let d = _mm256_loadu_ps(op.dy.add(m * op.ldy + p));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm256_fmadd_ps(d, x, *acc);
                }
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        for (m, acc) in acc.iter().enumerate() {
            for (j, &acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(op.carry.add((m * 3 + j) * LANES + 8 * h), acc);
            }
        }
    }
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

    /// The weight gradient's sums are in one order: AVX-512 and AVX2, and
    /// one or three threads, give the same bits (planes of several
    /// blocks, channels and columns that fill no tile evenly).
    #[test]
    fn weight_grad_bits_do_not_depend_on_isa_or_threads() {
        let conv = Conv3d {
            batch: 2,
            cin: 5,
            cout: 7,
            dims: [4, 30, 29],
            k: 3,
            pad: 1,
        };
        let x = values(conv.batch * conv.cin * conv.voxels(), 4);
        let dy = values(conv.batch * conv.cout * conv.out_voxels(), 5);
        let mut results: Vec<(String, Vec<f32>)> = Vec::new();
        for isa in [Isa::Avx512, Isa::Avx2Fma] {
            if isa > crate::simd::detected() {
                continue;
            }
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut dw = vec![0f32; conv.cout * conv.patch()];
                assert!(pool.install(|| weight_grad_on(isa, &conv, &x, &dy, &mut dw)));
                results.push((format!("{}, {threads} threads", isa.name()), dw));
            }
        }
        for (name, dw) in results.iter().skip(1) {
            let same = dw.iter().zip(&results[0].1).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name} differs from {}", results[0].0);
        }
    }
}
