//! Patchify and unpatchify (MODEL.md §1): `B×C×D×H×W` ↔ `B×N×P`, token
//! `n = (dp·Hp + hp)·Wp + wp`, patch values in `[kd][kh][kw][c]` order.

use rayon::prelude::*;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::rng::RngStream;
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
    with_dtype!(x.dtype(), T => {
        Tensor::from_vec(patchify_slabs(c, x.cpu_slice::<T>()?, b), [b, c.num_tokens(), c.patch_dim()])
    })
}

/// The step's input on the CPU, as the device's fused kernel makes it:
/// the tokens `ids_keep` (`n` an item, item after item) of
/// `patchify(add_noise(x, sigma, rng))`, `B × n × P`, the same bits. Only
/// the kept tokens' voxels draw their normal numbers (value i of the
/// flattened batch uses number i, as `add_noise`): a quarter of the volume
/// at the default mask ratios, and no noisy volume is stored.
pub fn noisy_visible_tokens(
    c: &ModelConfig,
    x: &Tensor,
    ids_keep: &[usize],
    sigma: f64,
    rng: RngStream,
) -> Result<Tensor> {
    let b = expect_volume(c, x, "noisy_visible_tokens")?;
    let (tokens, p) = (c.num_tokens(), c.patch_dim());
    if !ids_keep.len().is_multiple_of(b) {
        return Err(Error::invalid(
            "noisy_visible_tokens",
            format!("{} kept tokens do not split over a batch of {b}", ids_keep.len()),
        ));
    }
    if let Some(&bad) = ids_keep.iter().find(|&&i| i >= tokens) {
        return Err(Error::invalid(
            "noisy_visible_tokens",
            format!("token {bad} out of range for {tokens}"),
        ));
    }
    // An empty batch has no rows (and `ids_keep` is then empty too).
    let n = ids_keep.len().checked_div(b).unwrap_or(0);
    let [d, h, w] = c.superpatch_size;
    let [pd, ph, pw] = c.patch_size;
    let [_, hp, wp] = c.grid();
    let ch = c.in_channels;
    with_dtype!(x.dtype(), T => {
        let src = x.cpu_slice::<T>()?;
        let mut out = vec![T::from_f64(0.0); ids_keep.len() * p];
        // Per task: the Philox blocks the token's runs need, their normals,
        // and where each run's first value sits among them.
        let scratch = || (Vec::<u64>::new(), Vec::<f32>::new(), Vec::<usize>::new());
        out.par_chunks_mut(p.max(1)).enumerate().for_each_init(scratch, |(blocks, eps, at), (r, o)| {
            let (item, tok) = (r / n, ids_keep[r]);
            let (tz, ty, tx) = (tok / (hp * wp), tok / wp % hp, tok % wp);
            // Flattened index of the first voxel of each of the token's
            // runs of `pw`, in the order (channel, z, y).
            let runs = (0..ch).flat_map(|k| (0..pd).flat_map(move |z| (0..ph).map(move |y| (k, z, y))));
            let first = |(k, z, y): (usize, usize, usize)| {
                (((item * ch + k) * d + tz * pd + z) * h + ty * ph + y) * w + tx * pw
            };
            if sigma != 0.0 {
                blocks.clear();
                at.clear();
                for run in runs.clone() {
                    let i = first(run);
                    at.push(4 * blocks.len() + i % 4);
                    blocks.extend((i / 4) as u64..=((i + pw - 1) / 4) as u64);
                }
                eps.resize(4 * blocks.len(), 0.0);
                rng.fill_normal_blocks(blocks, eps);
            }
            for (q, run @ (k, z, y)) in runs.enumerate() {
                let vals = &src[first(run)..][..pw];
                let dst = &mut o[(z * ph + y) * pw * ch + k..];
                if sigma == 0.0 {
                    for (ox, &v) in vals.iter().enumerate() {
                        dst[ox * ch] = v;
                    }
                } else {
                    for (ox, (&v, &e)) in vals.iter().zip(&eps[at[q]..]).enumerate() {
                        dst[ox * ch] = T::from_f64(v.to_f64() + sigma * e as f64);
                    }
                }
            }
        });
        Tensor::from_vec(out, [b, n, p])
    })
}

/// The patches of `b` volumes `src`, in parallel by slabs of tokens (the
/// `pd` planes of one token depth of one item).
fn patchify_slabs<T: Element>(c: &ModelConfig, src: &[T], b: usize) -> Vec<T> {
    let [d, h, w] = c.superpatch_size;
    let [pd, ph, pw] = c.patch_size;
    let [dp, hp, wp] = c.grid();
    let (p, ch, plane) = (c.patch_dim(), c.in_channels, h * w);
    let mut out = vec![T::from_f64(0.0); b * c.num_tokens() * p];
    out.par_chunks_mut((hp * wp * p).max(1)).enumerate().for_each(|(t, o)| {
        let (item, slab) = (t / dp, t % dp);
        for k in 0..ch {
            let vals = &src[((item * ch + k) * d + slab * pd) * plane..][..pd * plane];
            // A row of the slab by runs of `pw` voxels, one run a token.
            for z in 0..pd {
                for y in 0..h {
                    let at = (z * h + y) * w;
                    let tok_row = (y / ph) * wp;
                    let off_row = ((z * ph + y % ph) * pw) * ch + k;
                    for (px, run) in vals[at..at + w].chunks_exact(pw).enumerate() {
                        let dst = &mut o[(tok_row + px) * p + off_row..];
                        for (ox, &v) in run.iter().enumerate() {
                            dst[ox * ch] = v;
                        }
                    }
                }
            }
        }
    });
    out
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

    /// The CPU step's input gives exactly the bits of the three steps it
    /// replaces (noise, patchify, gather): runs of `pw` that start off a
    /// Philox block and cross one (pw 5, 3), one and two channels, f32 and
    /// f64, σ 0 and not, tokens in any order.
    #[test]
    fn noisy_visible_tokens_are_the_kept_rows_of_the_noisy_patches() {
        use crate::model::add_noise;
        let rng = RngStream::new(7, 3);
        for (size, patch) in [([4, 3, 5], [2, 3, 5]), ([4, 6, 6], [2, 3, 3]), ([8, 8, 8], [4, 4, 4])] {
            for ch in [1usize, 2] {
                let c = ModelConfig {
                    superpatch_size: size,
                    patch_size: patch,
                    in_channels: ch,
                    ..ModelConfig::tiny()
                };
                let [d, h, w] = size;
                let n_tok = c.num_tokens();
                let keep: Vec<usize> = (0..n_tok).rev().step_by(2).collect();
                let ids: Vec<usize> = keep.iter().chain(keep.iter().rev()).copied().collect();
                let vals: Vec<f64> = (0..2 * ch * d * h * w)
                    .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
                    .collect();
                for dtype in [DType::F32, DType::F64] {
                    let x = Tensor::from_vec(vals.clone(), [2, ch, d, h, w])
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    // Widening to f64 is exact, so equal bits stay equal.
                    let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
                    for sigma in [0.0, 0.1] {
                        let all = wide(&patchify(&c, &add_noise(&x, sigma, rng).unwrap()).unwrap());
                        let plain = wide(&patchify(&c, &x).unwrap());
                        let got = noisy_visible_tokens(&c, &x, &ids, sigma, rng).unwrap();
                        let p = c.patch_dim();
                        assert_eq!(got.dims(), [2, keep.len(), p]);
                        let got = wide(&got);
                        for (r, &t) in ids.iter().enumerate() {
                            let from = ((r / keep.len()) * n_tok + t) * p;
                            let (want, row) = (&all[from..from + p], &got[r * p..(r + 1) * p]);
                            let same = row.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{size:?}/{patch:?}, {ch} ch, {dtype:?}, σ {sigma}, row {r} (token {t})"
                            );
                            let noisy = row.iter().zip(&plain[from..from + p]).filter(|(a, b)| a != b).count();
                            assert_eq!(noisy == p, sigma > 0.0, "row {r}: {noisy} of {p} values have noise");
                        }
                    }
                }
                let err = noisy_visible_tokens(
                    &c,
                    &Tensor::from_vec(vals.clone(), [2, ch, d, h, w]).unwrap(),
                    &[n_tok, 0],
                    0.1,
                    rng,
                );
                assert!(err.unwrap_err().to_string().contains("out of range"));
            }
        }
        // An empty batch gives no rows, and a list that does not split
        // over the batch is an error.
        let c = ModelConfig::tiny();
        let empty = Tensor::zeros([0, 1, 32, 32, 32], DType::F32);
        assert_eq!(noisy_visible_tokens(&c, &empty, &[], 0.1, rng).unwrap().numel(), 0);
        let one = Tensor::zeros([2, 1, 32, 32, 32], DType::F32);
        assert!(noisy_visible_tokens(&c, &one, &[0, 1, 2], 0.1, rng).is_err());
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
