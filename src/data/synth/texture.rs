//! Smooth random fields (gradient noise) sampled on the voxel grid: parenchyma
//! mottling, bowel loops, gas pockets, trabecular bone.
//!
//! The lattice is anchored in millimetres of the centred scanner frame and its
//! gradients are Philox draws addressed by lattice coordinates, so a field
//! does not depend on how many voxels sample it, and a coarser spacing sees
//! the same structures as a finer one.

use super::SynthError;
use crate::rng::RngStream;

/// Lattice coordinates are offset by this so they are non-negative in the
/// Philox index; `Field::new` keeps them within ±`LATTICE_HALF`.
const LATTICE_HALF: i64 = 1 << 13;

/// Where a voxel column (or row, or slice) falls in the lattice.
#[derive(Clone, Copy, Debug, Default)]
struct Axis {
    cell: usize,
    t: f32,
    fade: f32,
}

fn axis(coords: &[f32], cell_mm: f32, g0: i64) -> Vec<Axis> {
    coords
        .iter()
        .map(|&c| {
            let u = c / cell_mm;
            let g = u.floor();
            let t = u - g;
            Axis {
                cell: (g as i64 - g0) as usize,
                t,
                fade: t * t * t * (t * (t * 6.0 - 15.0) + 10.0),
            }
        })
        .collect()
}

pub(crate) struct Field {
    nx: usize,
    ny: usize,
    grad: Vec<[f32; 3]>,
    ax: Vec<Axis>,
    ay: Vec<Axis>,
    az: Vec<Axis>,
}

impl Field {
    /// A field over the voxel centres `coords` (z, y, x in mm), with lattice
    /// cells of `cell` mm (z, y, x). `id` tells fields of one phantom apart.
    pub fn new(rng: RngStream, id: u64, coords: [&[f32]; 3], cell: [f32; 3]) -> Result<Field, SynthError> {
        let mut ranges = [(0i64, 0i64); 3];
        for a in 0..3 {
            let lo = coords[a].iter().copied().fold(f32::MAX, f32::min);
            let hi = coords[a].iter().copied().fold(f32::MIN, f32::max);
            let (g0, g1) = ((lo / cell[a]).floor() as i64, (hi / cell[a]).floor() as i64 + 1);
            if g0 < -LATTICE_HALF || g1 >= LATTICE_HALF {
                return Err(SynthError::TooLarge);
            }
            ranges[a] = (g0, g1);
        }
        let dims = ranges.map(|(g0, g1)| (g1 - g0 + 1) as usize);
        let count = dims[0]
            .checked_mul(dims[1])
            .and_then(|n| n.checked_mul(dims[2]))
            .ok_or(SynthError::TooLarge)?;
        let mut grad = Vec::new();
        grad.try_reserve_exact(count).map_err(|_| SynthError::OutOfMemory)?;
        let mut row = vec![0.0f32; 4 * dims[2]];
        for gz in ranges[0].0..=ranges[0].1 {
            for gy in ranges[1].0..=ranges[1].1 {
                let gx = ranges[2].0;
                let key = |g: i64| (g + LATTICE_HALF) as u64;
                let lin = (id << 42) | (key(gz) << 28) | (key(gy) << 14) | key(gx);
                rng.fill_uniform(4 * lin, &mut row);
                grad.extend(
                    row.chunks_exact(4)
                        .map(|w| [2.0 * w[0] - 1.0, 2.0 * w[1] - 1.0, 2.0 * w[2] - 1.0]),
                );
            }
        }
        Ok(Field {
            nx: dims[2],
            ny: dims[1],
            grad,
            az: axis(coords[0], cell[0], ranges[0].0),
            ay: axis(coords[1], cell[1], ranges[1].0),
            ax: axis(coords[2], cell[2], ranges[2].0),
        })
    }

    /// The field at voxel (iz, iy, ix); roughly within ±1, standard deviation
    /// about 0.3.
    pub fn at(&self, iz: usize, iy: usize, ix: usize) -> f32 {
        let (z, y, x) = (self.az[iz], self.ay[iy], self.ax[ix]);
        let sy = self.nx;
        let sz = self.nx * self.ny;
        let base = z.cell * sz + y.cell * sy + x.cell;
        let g = &self.grad;
        let dot = |i: usize, dx: f32, dy: f32, dz: f32| {
            let v = g[i];
            v[0] * (x.t - dx) + v[1] * (y.t - dy) + v[2] * (z.t - dz)
        };
        let l = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let c00 = l(dot(base, 0.0, 0.0, 0.0), dot(base + 1, 1.0, 0.0, 0.0), x.fade);
        let c01 = l(dot(base + sy, 0.0, 1.0, 0.0), dot(base + sy + 1, 1.0, 1.0, 0.0), x.fade);
        let c10 = l(dot(base + sz, 0.0, 0.0, 1.0), dot(base + sz + 1, 1.0, 0.0, 1.0), x.fade);
        let c11 = l(
            dot(base + sz + sy, 0.0, 1.0, 1.0),
            dot(base + sz + sy + 1, 1.0, 1.0, 1.0),
            x.fade,
        );
        // Gradient noise with gradients in the unit cube peaks near ±1; the
        // factor 1.6 brings its spread to about 0.3 for the thresholds below.
        1.6 * l(l(c00, c01, y.fade), l(c10, c11, y.fade), z.fade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coords(n: usize, step: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 - n as f32 / 2.0) * step).collect()
    }

    #[test]
    fn spread_is_about_a_third() {
        let c = coords(40, 1.0);
        let f = Field::new(RngStream::new(1, 2), 3, [&c, &c, &c], [4.0, 4.0, 4.0]);
        let Ok(f) = f else { panic!("field") };
        let v: Vec<f32> = (0..40 * 40 * 40)
            .map(|i| f.at(i / 1600, (i / 40) % 40, i % 40))
            .collect();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(m.abs() < 0.1 && (0.2..0.45).contains(&sd), "mean {m} sd {sd}");
        assert!(v.iter().all(|x| x.abs() < 2.0));
    }

    #[test]
    fn field_is_anchored_in_millimetres() {
        // Two grids sharing some voxel centres see the same values there.
        let a = coords(20, 1.0);
        let b: Vec<f32> = a.iter().step_by(2).copied().collect();
        let rng = RngStream::new(5, 6);
        let (Ok(fa), Ok(fb)) = (
            Field::new(rng, 1, [&a, &a, &a], [3.0, 3.0, 3.0]),
            Field::new(rng, 1, [&b, &b, &b], [3.0, 3.0, 3.0]),
        ) else {
            panic!("field")
        };
        for i in 0..10 {
            assert!((fa.at(2 * i, 2 * i, 2 * i) - fb.at(i, i, i)).abs() < 1e-6);
        }
    }
}
