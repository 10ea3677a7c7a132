//! Non-overlapping superpatch tiles of a whole volume (MODEL.md §12), zero-padded
//! at the far ends, in (z, y, x) tile order.

use rayon::prelude::*;

use crate::error::Result;

/// How many tiles of `size` cover `shape` along each axis.
pub fn tile_grid(shape: [usize; 3], size: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|a| shape[a].div_ceil(size[a].max(1)))
}

/// Cuts `values` (`D × H × W`) into tiles of `size`, each `size` voxels,
/// concatenated; `f` maps a voxel (e.g. the HU window), padding is `pad`.
pub fn tile<T: Copy + Send + Sync, U: Copy + Send + Sync>(
    values: &[T],
    shape: [usize; 3],
    size: [usize; 3],
    pad: U,
    f: impl Fn(T) -> U + Sync,
) -> Result<Vec<U>> {
    let grid = tile_grid(shape, size);
    let per = size.iter().product::<usize>();
    let count = grid.iter().product::<usize>();
    let n = count.saturating_mul(per);
    let mut out = crate::host::filled_vec(n, pad, &format!("{count} tiles of {size:?} voxels"))?;
    let [d, h, w] = size;
    out.par_chunks_mut(per).enumerate().for_each(|(t, tile)| {
        let (tz, ty, tx) = (t / (grid[1] * grid[2]), (t / grid[2]) % grid[1], t % grid[2]);
        for z in 0..d {
            let sz = tz * d + z;
            if sz >= shape[0] {
                break;
            }
            for y in 0..h {
                let sy = ty * h + y;
                if sy >= shape[1] {
                    break;
                }
                let x0 = tx * w;
                let n = w.min(shape[2].saturating_sub(x0));
                let src = &values[(sz * shape[1] + sy) * shape[2] + x0..][..n];
                let dst = &mut tile[(z * h + y) * w..][..n];
                dst.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v));
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_and_pad() {
        let shape = [3, 5, 4];
        let v: Vec<u32> = (0..60).collect();
        let t = tile(&v, shape, [2, 2, 2], u32::MAX, |x| x).unwrap();
        assert_eq!(tile_grid(shape, [2, 2, 2]), [2, 3, 2]);
        assert_eq!(t.len(), 12 * 8);
        // Every voxel appears exactly once; the rest is padding.
        let mut seen: Vec<u32> = t.iter().copied().filter(|&x| x != u32::MAX).collect();
        seen.sort();
        assert_eq!(seen, v);
        // Tile 1 = (0, 0, 1): voxel (0, 0, 2) is value 2, first in the tile.
        assert_eq!(t[8], 2);
        // The last tile (1, 2, 1) holds voxel (2, 4, 2) = 58 at (0, 0, 0) and padding elsewhere.
        let last = &t[11 * 8..];
        assert_eq!(last[0], 58);
        assert_eq!(last[1], 59);
        assert!(last[2..].iter().all(|&x| x == u32::MAX));
    }
}
