//! Synthetic abdominal CT phantoms with organ label maps: the built-in data
//! for pretraining and for the organ-presence probe when no scans are at hand.
//!
//! A phantom is a trunk in air on a scanner couch: skin, subcutaneous fat and
//! muscle wall; lung bases and the heart above the diaphragm; below it liver,
//! spleen, kidneys (cortex, medulla, sinus), stomach (gas over fluid),
//! gallbladder, pancreas, aorta with its branches, the caval and portal veins,
//! duodenum, colon and small bowel in mesenteric fat; vertebrae with discs,
//! ribs, back muscles and psoas. Organs are ellipsoids and tubes with smooth
//! random deformations whose size, pose and craniocaudal extent vary with the
//! seed, so crops see different organ sets. Attenuations are those of a
//! late-arterial contrast phase. The volume is then blurred by a Gaussian
//! point-spread function and given correlated noise.
//!
//! Geometry is in millimetres (see `anatomy` for the frame), so spacing
//! changes voxel counts, never the anatomy. Phantom `index` of `seed` draws
//! only from Philox streams keyed by (seed, index), so it is the same whatever
//! else is generated, in any order, on any number of threads.

mod anatomy;
mod filter;
mod geom;
mod render;
mod texture;

use crate::rng::RngStream;
use rayon::prelude::*;
use std::fmt;

/// BTCV label values (MODEL.md §12); 0 is background.
pub const LABEL_SPLEEN: u8 = 1;
pub const LABEL_RIGHT_KIDNEY: u8 = 2;
pub const LABEL_LEFT_KIDNEY: u8 = 3;
pub const LABEL_GALLBLADDER: u8 = 4;
pub const LABEL_LIVER: u8 = 6;
pub const LABEL_STOMACH: u8 = 7;
pub const LABEL_AORTA: u8 = 8;
pub const LABEL_PANCREAS: u8 = 11;

/// Every organ label a phantom contains.
pub const ORGAN_LABELS: [u8; 8] = [
    LABEL_SPLEEN,
    LABEL_RIGHT_KIDNEY,
    LABEL_LEFT_KIDNEY,
    LABEL_GALLBLADDER,
    LABEL_LIVER,
    LABEL_STOMACH,
    LABEL_AORTA,
    LABEL_PANCREAS,
];

/// The organ a label value stands for.
pub fn label_name(label: u8) -> Option<&'static str> {
    Some(match label {
        LABEL_SPLEEN => "spleen",
        LABEL_RIGHT_KIDNEY => "right kidney",
        LABEL_LEFT_KIDNEY => "left kidney",
        LABEL_GALLBLADDER => "gallbladder",
        LABEL_LIVER => "liver",
        LABEL_STOMACH => "stomach",
        LABEL_AORTA => "aorta",
        LABEL_PANCREAS => "pancreas",
        _ => return None,
    })
}

/// Stream ids: a tag in the top 16 bits (outside the purposes of
/// `rng::stream_id`, whose top byte is 1–4) and the phantom index below.
const STREAM_SHAPE: u64 = 0x5937 << 48;
const STREAM_TEXTURE: u64 = 0x5938 << 48;
const STREAM_NOISE: u64 = 0x5939 << 48;
/// Indices must fit below the tag.
pub const MAX_INDEX: u64 = (1 << 48) - 1;
/// Largest accepted extent of any axis.
pub const MAX_SIZE: usize = 1024;
/// Largest accepted spacing, in mm: a kilometre-wide field of view is a
/// typo, and larger values would overflow the coordinate arithmetic.
pub const MAX_SPACING: f32 = 1000.0;
/// Largest accepted blur; beyond it the volume is a smear.
pub const MAX_BLUR_SIGMA: f32 = 16.0;

const AXES: [&str; 3] = ["D", "H", "W"];

#[derive(Clone, Debug, PartialEq)]
pub struct PhantomOptions {
    /// D, H, W: slices (superior to inferior), rows (anterior to posterior),
    /// columns (patient right to left, radiological convention).
    pub size: [usize; 3],
    /// Millimetres per voxel along D, H, W.
    pub spacing: [f32; 3],
    /// Standard deviation of the added noise, in HU.
    pub noise_hu: f32,
    /// Standard deviation of the Gaussian point-spread function, in voxels,
    /// along every axis.
    pub blur_sigma_vox: f32,
}

impl Default for PhantomOptions {
    fn default() -> Self {
        PhantomOptions {
            size: [96, 160, 160],
            spacing: [2.5, 0.8, 0.8],
            noise_hu: 15.0,
            blur_sigma_vox: 0.8,
        }
    }
}

impl PhantomOptions {
    pub fn validate(&self) -> Result<(), SynthError> {
        for (axis, &n) in self.size.iter().enumerate() {
            if n == 0 {
                return Err(SynthError::EmptySize { axis: AXES[axis] });
            }
            if n > MAX_SIZE {
                return Err(SynthError::SizeTooLarge {
                    axis: AXES[axis],
                    size: n,
                });
            }
        }
        for (axis, &s) in self.spacing.iter().enumerate() {
            if !(s > 0.0 && s <= MAX_SPACING) {
                return Err(SynthError::BadSpacing {
                    axis: AXES[axis],
                    spacing: s,
                });
            }
        }
        if !(self.noise_hu.is_finite() && self.noise_hu >= 0.0) {
            return Err(SynthError::BadNoise(self.noise_hu));
        }
        if !(self.blur_sigma_vox.is_finite() && (0.0..=MAX_BLUR_SIGMA).contains(&self.blur_sigma_vox)) {
            return Err(SynthError::BadBlur(self.blur_sigma_vox));
        }
        Ok(())
    }
}

/// One phantom: HU and BTCV labels, D × H × W, row-major with W fastest.
#[derive(Clone, Debug, PartialEq)]
pub struct Phantom {
    pub size: [usize; 3],
    pub spacing: [f32; 3],
    pub hu: Vec<i16>,
    pub labels: Vec<u8>,
}

impl Phantom {
    /// Offset of voxel (d, h, w) in `hu` and `labels`.
    pub fn offset(&self, d: usize, h: usize, w: usize) -> usize {
        (d * self.size[1] + h) * self.size[2] + w
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SynthError {
    EmptySize {
        axis: &'static str,
    },
    SizeTooLarge {
        axis: &'static str,
        size: usize,
    },
    BadSpacing {
        axis: &'static str,
        spacing: f32,
    },
    BadNoise(f32),
    BadBlur(f32),
    IndexTooLarge(u64),
    /// The texture lattice would not be addressable.
    TooLarge,
    OutOfMemory,
}

impl fmt::Display for SynthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SynthError::EmptySize { axis } => write!(f, "synthetic phantom: size along {axis} is zero"),
            SynthError::SizeTooLarge { axis, size } => {
                write!(f, "synthetic phantom: size {size} along {axis} exceeds {MAX_SIZE}")
            }
            SynthError::BadSpacing { axis, spacing } => {
                write!(
                    f,
                    "synthetic phantom: spacing {spacing} mm along {axis} is not a positive number"
                )
            }
            SynthError::BadNoise(v) => write!(f, "synthetic phantom: noise {v} HU is not a non-negative number"),
            SynthError::BadBlur(v) => {
                write!(
                    f,
                    "synthetic phantom: blur sigma {v} voxels is not within 0..={MAX_BLUR_SIGMA}"
                )
            }
            SynthError::IndexTooLarge(i) => write!(f, "synthetic phantom: index {i} exceeds {MAX_INDEX}"),
            SynthError::TooLarge => write!(f, "synthetic phantom: field of view too large"),
            SynthError::OutOfMemory => write!(f, "synthetic phantom: out of memory"),
        }
    }
}

impl std::error::Error for SynthError {}

fn filled<T: Clone>(n: usize, v: T) -> Result<Vec<T>, SynthError> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| SynthError::OutOfMemory)?;
    out.resize(n, v);
    Ok(out)
}

/// Texture fields with lattice cells in scanner millimetres (z, y, x), never
/// finer than a voxel: detail below the voxel size would only alias.
fn textures(rng: RngStream, g: &render::Grid, spacing: [f32; 3]) -> Result<render::Textures, SynthError> {
    let coords = [g.mm[0].as_slice(), g.mm[1].as_slice(), g.mm[2].as_slice()];
    let field = |id: u64, cell: [f32; 3]| {
        let cell = [0, 1, 2].map(|a| cell[a].max(spacing[a]));
        texture::Field::new(rng, id, coords, cell)
    };
    Ok(render::Textures {
        fine: field(1, [3.0, 1.5, 1.5])?,
        medium: field(2, [8.0, 4.0, 4.0])?,
        bowel: field(3, [20.0, 8.0, 8.0])?,
        bowel_fine: field(4, [8.0, 3.5, 3.5])?,
        gas: field(5, [10.0, 4.0, 4.0])?,
    })
}

/// Phantom `index` of `seed`.
pub fn phantom(seed: u64, index: u64, opts: &PhantomOptions) -> Result<Phantom, SynthError> {
    opts.validate()?;
    if index > MAX_INDEX {
        return Err(SynthError::IndexTooLarge(index));
    }
    let [nz, ny, nx] = opts.size;
    let plane = ny * nx;
    let n = nz * plane;

    let anatomy = anatomy::Anatomy::sample(RngStream::new(seed, STREAM_SHAPE | index));
    let grid = render::Grid::new(opts.size, opts.spacing);
    let tex = textures(RngStream::new(seed, STREAM_TEXTURE | index), &grid, opts.spacing)?;
    let kernel = filter::gaussian(opts.blur_sigma_vox);

    // Each slice is painted and blurred in-plane on its own; the blur along
    // z needs the neighbouring slices, so it runs as a second pass that also
    // adds the noise and rounds.
    let mut hu = filled(n, 0.0f32)?;
    let mut labels = filled(n, 0u8)?;
    hu.par_chunks_mut(plane)
        .zip(labels.par_chunks_mut(plane))
        .enumerate()
        .for_each_init(
            || (render::Scratch::new(plane), Vec::new()),
            |(scratch, tmp), (iz, (h, l))| {
                render::render_slice(&anatomy, &grid, &tex, iz, h, l, scratch);
                filter::blur_rows(h, nx, &kernel, tmp);
                filter::blur_cols(h, nx, &kernel, tmp);
            },
        );

    let mut out = filled(n, 0i16)?;
    let noise = RngStream::new(seed, STREAM_NOISE | index);
    let r = (kernel.len() / 2) as isize;
    let hu = &hu;
    out.par_chunks_mut(plane).enumerate().for_each_init(
        || (vec![0.0f32; plane], vec![0.0f32; plane], Vec::new()),
        |(acc, grain, tmp), (iz, o)| {
            acc.fill(0.0);
            for (j, &w) in kernel.iter().enumerate() {
                let zi = (iz as isize + j as isize - r).clamp(0, nz as isize - 1) as usize;
                for (a, &s) in acc.iter_mut().zip(&hu[zi * plane..(zi + 1) * plane]) {
                    *a += w * s;
                }
            }
            if opts.noise_hu > 0.0 {
                noise.fill_normal((iz * plane) as u64, grain);
                filter::correlate_noise(grain, nx, tmp);
                for (a, &g) in acc.iter_mut().zip(grain.iter()) {
                    *a += opts.noise_hu * g;
                }
            }
            for (o, &a) in o.iter_mut().zip(acc.iter()) {
                *o = a.round().clamp(-1024.0, 3071.0) as i16;
            }
        },
    );

    Ok(Phantom {
        size: opts.size,
        spacing: opts.spacing,
        hu: out,
        labels,
    })
}

#[cfg(test)]
mod tests;
