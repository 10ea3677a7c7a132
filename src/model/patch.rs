//! Patchify and unpatchify (MODEL.md §1): `B×C×D×H×W` ↔ `B×N×P`, token
//! `n = (dp·Hp + hp)·Wp + wp`, patch values in `[kd][kh][kw][c]` order.

use rayon::prelude::*;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Element, Tensor};

fn expect_volume(c: &ModelConfig, x: &Tensor, what: &'static str) -> Result<usize> {
    let [d, h, w] = c.superpatch_size;
    let dims = x.dims();
    if dims.len() != 5 || dims[1] != c.in_channels || dims[2..] != [d, h, w] {
        return Err(Error::bad_shape(
            what,
            x.shape(),
            format!("expected B × {} × {d} × {h} × {w} for this model", c.in_channels),
        ));
    }
    Ok(dims[0])
}

/// For voxel-major traversal: the (token, offset in patch) of voxel `(ch, z, y, x)`.
fn patch_index(c: &ModelConfig, ch: usize, z: usize, y: usize, x: usize) -> (usize, usize) {
    let [pd, ph, pw] = c.patch_size;
    let [_, hp, wp] = c.grid();
    let n = ((z / pd) * hp + y / ph) * wp + x / pw;
    let off = (((z % pd) * ph + y % ph) * pw + x % pw) * c.in_channels + ch;
    (n, off)
}

pub fn patchify(c: &ModelConfig, x: &Tensor) -> Result<Tensor> {
    let b = expect_volume(c, x, "patchify")?;
    let [d, h, w] = c.superpatch_size;
    let (n, p, ch) = (c.num_tokens(), c.patch_dim(), c.in_channels);
    with_dtype!(x.dtype(), T => {
        let src = x.cpu_slice::<T>()?;
        let mut out = vec![T::from_f64(0.0); b * n * p];
        let [pd, ph, pw] = c.patch_size;
        let [_, hp, wp] = c.grid();
        out.par_chunks_mut(n * p).zip(src.par_chunks(ch * d * h * w)).for_each(|(o, s)| {
            // A row of the volume by runs of `pw` voxels, one run a token:
            // `patch_index` with its divisions made once a row.
            for k in 0..ch {
                for z in 0..d {
                    for y in 0..h {
                        let row = &s[((k * d + z) * h + y) * w..][..w];
                        let tok_row = ((z / pd) * hp + y / ph) * wp;
                        let off_row = ((z % pd) * ph + y % ph) * pw * ch + k;
                        for (px, run) in row.chunks_exact(pw).enumerate() {
                            let dst = &mut o[(tok_row + px) * p + off_row..];
                            for (ox, &v) in run.iter().enumerate() {
                                dst[ox * ch] = v;
                            }
                        }
                    }
                }
            }
        });
        Tensor::from_vec(out, [b, n, p])
    })
}

pub fn unpatchify(c: &ModelConfig, patches: &Tensor) -> Result<Tensor> {
    let (n, p, ch) = (c.num_tokens(), c.patch_dim(), c.in_channels);
    let dims = patches.dims();
    if dims.len() != 3 || dims[1] != n || dims[2] != p {
        return Err(Error::bad_shape(
            "unpatchify",
            patches.shape(),
            format!("expected B × {n} × {p}"),
        ));
    }
    let b = dims[0];
    let [d, h, w] = c.superpatch_size;
    with_dtype!(patches.dtype(), T => {
        let src = patches.cpu_slice::<T>()?;
        let mut out = vec![T::from_f64(0.0); b * ch * d * h * w];
        out.par_chunks_mut(ch * d * h * w).zip(src.par_chunks(n * p)).for_each(|(o, s)| {
            for k in 0..ch {
                for z in 0..d {
                    for y in 0..h {
                        for xx in 0..w {
                            let (tok, off) = patch_index(c, k, z, y, xx);
                            o[((k * d + z) * h + y) * w + xx] = s[tok * p + off];
                        }
                    }
                }
            }
        });
        Tensor::from_vec(out, [b, ch, d, h, w])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    #[allow(clippy::identity_op, clippy::erasing_op)]
    fn round_trip_and_token_order() {
        let c = ModelConfig {
            superpatch_size: [4, 6, 4],
            patch_size: [2, 3, 2],
            in_channels: 2,
            ..ModelConfig::tiny()
        };
        let vals: Vec<f64> = (0..2 * 2 * 4 * 6 * 4).map(|i| i as f64).collect();
        let x = Tensor::from_f64_slice(&vals, [2, 2, 4, 6, 4], DType::F64).unwrap();
        let p = patchify(&c, &x).unwrap();
        assert_eq!(p.dims(), [2, 8, 24]);
        assert_eq!(unpatchify(&c, &p).unwrap().to_f64_vec().unwrap(), vals);
        // Token 3 = (dp 0, hp 1, wp 1); its value 1 is (kd 0, kh 0, kw 0, c 1):
        // channel 1, z 0, y 3, x 2 of item 0.
        let v = p.to_f64_vec().unwrap();
        let want = ((1 * 4 + 0) * 6 + 3) * 4 + 2;
        assert_eq!(v[3 * 24 + 1], want as f64);
        // Value 2·2 = 4 → (kd 0, kh 1, kw 0, c 0): z 0, y 4, x 2.
        assert_eq!(v[3 * 24 + 4], ((0 * 6 + 4) * 4 + 2) as f64);
    }

    #[test]
    fn patchify_puts_every_voxel_where_patch_index_says() {
        for ch in [1usize, 2] {
            let c = ModelConfig {
                superpatch_size: [4, 6, 8],
                patch_size: [2, 3, 4],
                in_channels: ch,
                ..ModelConfig::tiny()
            };
            let [d, h, w] = c.superpatch_size;
            let vals: Vec<f32> = (0..2 * ch * d * h * w).map(|i| i as f32).collect();
            let x = Tensor::from_vec(vals.clone(), [2, ch, d, h, w]).unwrap();
            let got = patchify(&c, &x).unwrap().to_vec::<f32>().unwrap();
            let (n, p) = (c.num_tokens(), c.patch_dim());
            for bi in 0..2 {
                for k in 0..ch {
                    for z in 0..d {
                        for y in 0..h {
                            for xx in 0..w {
                                let (tok, off) = patch_index(&c, k, z, y, xx);
                                let v = vals[(((bi * ch + k) * d + z) * h + y) * w + xx];
                                assert_eq!(got[(bi * n + tok) * p + off], v, "ch {ch} at {bi},{k},{z},{y},{xx}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let c = ModelConfig::tiny();
        let x = Tensor::zeros([1, 1, 32, 32, 16], DType::F32);
        let e = patchify(&c, &x).unwrap_err().to_string();
        assert!(e.contains("[1, 1, 32, 32, 16]") && e.contains("32 × 32 × 32"), "{e}");
        assert!(unpatchify(&c, &Tensor::zeros([1, 64, 511], DType::F32)).is_err());
    }
}
