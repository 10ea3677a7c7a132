//! Segmentation metrics per class (SPEC §14): Dice, and the 95th-percentile
//! Hausdorff distance in mm (as MONAI computes it: the larger of the two
//! directed 95th percentiles of surface-to-surface distances, with
//! NumPy's linear percentile), via an exact Euclidean distance transform
//! that honours the voxel spacing.

/// Dice of class `k` between two label maps; `None` when neither holds it.
pub fn dice(pred: &[u8], truth: &[u8], k: u8) -> Option<f64> {
    let (mut inter, mut p, mut t) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(truth) {
        let (a, b) = (a == k, b == k);
        inter += usize::from(a && b);
        p += usize::from(a);
        t += usize::from(b);
    }
    (p + t > 0).then(|| 2.0 * inter as f64 / (p + t) as f64)
}

/// The voxels of `mask` with a face neighbour outside it (or on the
/// volume's border).
fn surface(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [d, h, w] = shape;
    let at = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let mut out = vec![false; mask.len()];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                if !mask[at(z, y, x)] {
                    continue;
                }
                let edge = z == 0 || y == 0 || x == 0 || z + 1 == d || y + 1 == h || x + 1 == w;
                out[at(z, y, x)] = edge
                    || !mask[at(z - 1, y, x)]
                    || !mask[at(z + 1, y, x)]
                    || !mask[at(z, y - 1, x)]
                    || !mask[at(z, y + 1, x)]
                    || !mask[at(z, y, x - 1)]
                    || !mask[at(z, y, x + 1)];
            }
        }
    }
    out
}

/// One axis of the squared distance transform (the lower envelope of
/// parabolas): `f` sampled at positions `i·s`, in place.
fn edt_1d(f: &mut [f64], s: f64) {
    let n = f.len();
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    let mut k = 0;
    let src = f.to_vec();
    let pos = |i: usize| i as f64 * s;
    let first = match src.iter().position(|x| x.is_finite()) {
        Some(i) => i,
        None => return,
    };
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !src[q].is_finite() {
            continue;
        }
        // Drop the parabolas the new one hides (z[0] = −∞ stops at the first).
        let mut sct;
        loop {
            let p = v[k];
            sct = ((src[q] + pos(q) * pos(q)) - (src[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if k > 0 && sct <= z[k] {
                k -= 1;
            } else {
                break;
            }
        }
        k += 1;
        v[k] = q;
        z[k] = sct;
        z[k + 1] = f64::INFINITY;
    }
    let mut j = 0;
    for (q, out) in f.iter_mut().enumerate() {
        while z[j + 1] < pos(q) {
            j += 1;
        }
        let p = v[j];
        *out = (pos(q) - pos(p)).powi(2) + src[p];
    }
}

/// Squared Euclidean distance (mm²) from every voxel to the nearest voxel
/// of `feature`; infinite everywhere when there is none.
pub fn distance_sq(feature: &[bool], shape: [usize; 3], spacing: [f32; 3]) -> Vec<f64> {
    let [d, h, w] = shape;
    let mut f: Vec<f64> = feature.iter().map(|&b| if b { 0.0 } else { f64::INFINITY }).collect();
    let mut line = Vec::new();
    // Along W, H, D in turn.
    for (axis, len, stride) in [(2, w, 1), (1, h, w), (0, d, h * w)] {
        let s = spacing[axis] as f64;
        for start in 0..d * h * w {
            // A line starts where its coordinate along `axis` is 0.
            if (start / stride) % len != 0 {
                continue;
            }
            line.clear();
            line.extend((0..len).map(|i| f[start + i * stride]));
            edt_1d(&mut line, s);
            for (i, &x) in line.iter().enumerate() {
                f[start + i * stride] = x;
            }
        }
    }
    f
}

/// NumPy's `percentile` with linear interpolation.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// HD95 of class `k` in mm; `None` when either map lacks the class.
pub fn hd95(pred: &[u8], truth: &[u8], k: u8, shape: [usize; 3], spacing: [f32; 3]) -> Option<f64> {
    let p: Vec<bool> = pred.iter().map(|&c| c == k).collect();
    let t: Vec<bool> = truth.iter().map(|&c| c == k).collect();
    if !p.contains(&true) || !t.contains(&true) {
        return None;
    }
    let (sp, st) = (surface(&p, shape), surface(&t, shape));
    let (dp, dt) = (distance_sq(&sp, shape, spacing), distance_sq(&st, shape, spacing));
    let directed = |from: &[bool], to: &[f64]| -> f64 {
        let mut d: Vec<f64> = from
            .iter()
            .zip(to)
            .filter(|(&s, _)| s)
            .map(|(_, &x)| x.sqrt())
            .collect();
        percentile(&mut d, 95.0)
    };
    Some(directed(&sp, &dt).max(directed(&st, &dp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::RngStream;

    /// The distance transform equals brute force on a random sparse set with
    /// anisotropic spacing.
    #[test]
    fn distance_transform_is_exact() {
        let shape = [5, 7, 6];
        let spacing = [2.5f32, 0.8, 1.3];
        let n = 5 * 7 * 6;
        let rng = RngStream::new(3, 9);
        let feature: Vec<bool> = (0..n).map(|i| rng.uniform(i as u64) < 0.08).collect();
        let got = distance_sq(&feature, shape, spacing);
        let coord = |i: usize| [i / 42, (i / 6) % 7, i % 6];
        for (i, &g) in got.iter().enumerate() {
            let want = (0..n)
                .filter(|&j| feature[j])
                .map(|j| {
                    let (a, b) = (coord(i), coord(j));
                    (0..3)
                        .map(|k| ((a[k] as f64 - b[k] as f64) * spacing[k] as f64).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((g - want).abs() < 1e-9, "voxel {i}: {g} vs {want}");
        }
    }

    /// Two 4³ cubes one voxel apart along W at 2 mm: Dice 0.75 and HD95 2 mm.
    #[test]
    fn shifted_cube() {
        let shape = [6, 6, 6];
        let at = |z: usize, y: usize, x: usize| (z * 6 + y) * 6 + x;
        let (mut p, mut t) = (vec![0u8; 216], vec![0u8; 216]);
        for z in 1..5 {
            for y in 1..5 {
                for x in 1..5 {
                    t[at(z, y, x)] = 1;
                    p[at(z, y, x + 1)] = 1;
                }
            }
        }
        // Overlap 4·4·3 = 48 of 64 each: Dice 96/128.
        assert_eq!(dice(&p, &t, 1), Some(0.75));
        assert_eq!(dice(&p, &t, 2), None);
        let hd = hd95(&p, &t, 1, shape, [1.0, 1.0, 2.0]).unwrap();
        assert!((hd - 2.0).abs() < 1e-12, "{hd}");
        assert_eq!(hd95(&t, &t, 1, shape, [1.0, 1.0, 2.0]), Some(0.0));
        assert_eq!(hd95(&p, &vec![0u8; 216], 1, shape, [1.0; 3]), None);
    }

    #[test]
    fn percentile_is_numpys_linear() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85
        assert!((percentile(&mut v, 95.0) - 3.85).abs() < 1e-12);
    }
}
