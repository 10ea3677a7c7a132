//! Random superpatch crops (MODEL.md §11): HU window to [0, 1], zero padding at
//! the far ends of a small volume, and the air rule.

use crate::rng::RngStream;

/// A stored voxel: HU as i16 in the cache, f32 straight from a NIfTI file.
pub trait Voxel: Copy {
    fn hu(self) -> f32;
}

impl Voxel for i16 {
    fn hu(self) -> f32 {
        self as f32
    }
}

impl Voxel for f32 {
    fn hu(self) -> f32 {
        self
    }
}

pub const HU_LOW: f32 = -175.0;
pub const HU_HIGH: f32 = 250.0;

/// MODEL.md §2: `(clip(v, −175, 250) + 175) / 425`.
pub fn hu_window(hu: f32) -> f32 {
    (hu.clamp(HU_LOW, HU_HIGH) - HU_LOW) / (HU_HIGH - HU_LOW)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropSpec {
    /// Superpatch size (D, H, W).
    pub size: [usize; 3],
    /// A crop whose mean (after the window) is below this is mostly air.
    pub air_threshold: f32,
    /// Draws before the best of them is kept.
    pub max_tries: usize,
}

impl CropSpec {
    pub fn new(size: [usize; 3]) -> Self {
        CropSpec {
            size,
            air_threshold: 0.05,
            max_tries: 10,
        }
    }

    pub fn voxels(&self) -> usize {
        self.size.iter().product()
    }

    /// Random values one crop may use: three per try.
    pub const DRAWS_PER_CROP: u64 = 32;
}

/// Where a crop was taken and what it looked like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub origin: [usize; 3],
    pub mean: f32,
    pub tries: usize,
}

/// An offset in `0..=span` from 32 random bits (multiply-shift, no modulo bias worth naming).
fn offset(bits: u32, span: usize) -> usize {
    ((bits as u64 * (span as u64 + 1)) >> 32) as usize
}

/// Copies the windowed crop at `origin` into `out` (zero where it leaves the
/// volume) and returns its mean.
fn fill<V: Voxel>(hu: &[V], shape: [usize; 3], size: [usize; 3], origin: [usize; 3], out: &mut [f32]) -> f32 {
    let [vd, vh, vw] = shape;
    let [d, h, w] = size;
    let mut sum = 0.0f64;
    for z in 0..d {
        for y in 0..h {
            let row = &mut out[(z * h + y) * w..(z * h + y + 1) * w];
            let (sz, sy) = (origin[0] + z, origin[1] + y);
            if sz >= vd || sy >= vh {
                row.iter_mut().for_each(|v| *v = 0.0);
                continue;
            }
            let base = (sz * vh + sy) * vw + origin[2];
            let inside = w.min(vw.saturating_sub(origin[2]));
            for (o, &v) in row[..inside].iter_mut().zip(&hu[base..base + inside]) {
                *o = hu_window(v.hu());
                sum += *o as f64;
            }
            row[inside..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    (sum / (d * h * w).max(1) as f64) as f32
}

/// The raw HU of the crop at `origin` as i16 (for expanding on the GPU,
/// kernels/input.cu), `i16::MIN` where it leaves the volume: the window maps
/// that to 0, as `fill` pads.
pub fn copy_hu<V: Voxel>(hu: &[V], shape: [usize; 3], size: [usize; 3], origin: [usize; 3], out: &mut [i16]) {
    let [vd, vh, vw] = shape;
    let [d, h, w] = size;
    for z in 0..d {
        for y in 0..h {
            let row = &mut out[(z * h + y) * w..(z * h + y + 1) * w];
            let (sz, sy) = (origin[0] + z, origin[1] + y);
            if sz >= vd || sy >= vh {
                row.iter_mut().for_each(|v| *v = i16::MIN);
                continue;
            }
            let base = (sz * vh + sy) * vw + origin[2];
            let inside = w.min(vw.saturating_sub(origin[2]));
            for (o, v) in row[..inside].iter_mut().zip(&hu[base..base + inside]) {
                *o = v.hu().round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
            }
            row[inside..].iter_mut().for_each(|v| *v = i16::MIN);
        }
    }
}

/// Draws a crop of `spec.size` from the `D × H × W` volume `hu` into `out`: each axis's origin is
/// uniform over the places the crop fits (0 where the volume is smaller, which
/// is then zero-padded at the far end). A mostly-air crop is redrawn up to
/// `max_tries` times in the same volume and the best try is kept; there is no
/// all-zero fallback. Try `t` uses values `first + 3t …` of `rng`.
pub fn sample_crop<V: Voxel>(
    hu: &[V],
    shape: [usize; 3],
    spec: &CropSpec,
    rng: RngStream,
    first: u64,
    out: &mut [f32],
) -> Crop {
    let mut best = Crop {
        origin: [0; 3],
        mean: f32::NEG_INFINITY,
        tries: 0,
    };
    let tries = spec.max_tries.max(1);
    for t in 0..tries {
        let origin: [usize; 3] = std::array::from_fn(|a| {
            offset(
                rng.bits(first + 3 * t as u64 + a as u64),
                shape[a].saturating_sub(spec.size[a]),
            )
        });
        let mean = fill(hu, shape, spec.size, origin, out);
        if mean >= spec.air_threshold {
            return Crop {
                origin,
                mean,
                tries: t + 1,
            };
        }
        if mean > best.mean {
            best = Crop {
                origin,
                mean,
                tries: t + 1,
            };
        }
    }
    // None passed: `out` holds the last try; refill with the best unless it was the last.
    if best.tries != tries {
        fill(hu, shape, spec.size, best.origin, out);
    }
    Crop { tries, ..best }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw-HU crop the GPU expands windows to exactly the f32 crop,
    /// padding included (the crop reaches past the volume on every axis).
    #[test]
    fn raw_hu_crops_window_to_the_f32_crops() {
        let shape = [5usize, 6, 7];
        let hu: Vec<i16> = (0..5 * 6 * 7).map(|i| ((i * 37) % 2400) as i16 - 1200).collect();
        let size = [4usize, 8, 8];
        for origin in [[0usize, 0, 0], [2, 1, 3], [4, 5, 6]] {
            let mut f = vec![0f32; 4 * 8 * 8];
            let mut raw = vec![0i16; 4 * 8 * 8];
            fill(&hu, shape, size, origin, &mut f);
            copy_hu(&hu, shape, size, origin, &mut raw);
            let windowed: Vec<f32> = raw.iter().map(|&v| hu_window(v as f32)).collect();
            assert_eq!(windowed, f, "origin {origin:?}");
            assert!(raw.contains(&i16::MIN), "the crop must reach past the volume");
        }
    }
}
