//! Scanner effects: the point-spread function as a separable Gaussian, and
//! quantum noise, which in filtered back-projection is correlated between
//! neighbouring pixels of a slice but not between slices.

/// Normalised Gaussian taps out to three sigma; `[1]` when there is no blur.
pub(crate) fn gaussian(sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (3.0 * sigma).ceil() as i64;
    let w: Vec<f32> = (-r..=r)
        .map(|i| libm::expf(-0.5 * (i as f32 / sigma) * (i as f32 / sigma)))
        .collect();
    let s: f32 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Convolves each row of a `ny × nx` plane with `k` (edges replicated).
pub(crate) fn blur_rows(plane: &mut [f32], nx: usize, k: &[f32], tmp: &mut Vec<f32>) {
    if k.len() == 1 {
        return;
    }
    let r = (k.len() / 2) as isize;
    tmp.resize(nx, 0.0);
    for row in plane.chunks_exact_mut(nx) {
        for (x, t) in tmp.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (j, &w) in k.iter().enumerate() {
                let xi = (x as isize + j as isize - r).clamp(0, nx as isize - 1) as usize;
                acc += w * row[xi];
            }
            *t = acc;
        }
        row.copy_from_slice(tmp);
    }
}

/// Convolves each column of a `ny × nx` plane with `k` (edges replicated),
/// whole rows at a time so the inner loop runs over contiguous memory.
pub(crate) fn blur_cols(plane: &mut [f32], nx: usize, k: &[f32], tmp: &mut Vec<f32>) {
    if k.len() == 1 || nx == 0 {
        return;
    }
    let ny = plane.len() / nx;
    let r = (k.len() / 2) as isize;
    tmp.clear();
    tmp.resize(plane.len(), 0.0);
    for y in 0..ny {
        let out = &mut tmp[y * nx..(y + 1) * nx];
        for (j, &w) in k.iter().enumerate() {
            let yi = (y as isize + j as isize - r).clamp(0, ny as isize - 1) as usize;
            let src = &plane[yi * nx..(yi + 1) * nx];
            for (o, &s) in out.iter_mut().zip(src) {
                *o += w * s;
            }
        }
    }
    plane.copy_from_slice(tmp);
}

/// White normal noise smoothed by a 3 × 3 binomial kernel and rescaled to
/// unit variance: a noise power spectrum falling off at high frequency, as
/// reconstruction kernels produce, instead of salt-and-pepper.
pub(crate) fn correlate_noise(noise: &mut [f32], nx: usize, tmp: &mut Vec<f32>) {
    const K: [f32; 3] = [0.25, 0.5, 0.25];
    blur_rows(noise, nx, &K, tmp);
    blur_cols(noise, nx, &K, tmp);
    // Each pass keeps Σw² = 3/8 of the variance; two passes 9/64.
    for v in noise.iter_mut() {
        *v *= 8.0 / 3.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_normalised_and_blur_keeps_constants() {
        let k = gaussian(0.8);
        assert_eq!(k.len(), 7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut p = vec![5.0f32; 6 * 4];
        let mut tmp = Vec::new();
        blur_rows(&mut p, 6, &k, &mut tmp);
        blur_cols(&mut p, 6, &k, &mut tmp);
        assert!(p.iter().all(|&v| (v - 5.0).abs() < 1e-5));
    }

    #[test]
    fn correlated_noise_keeps_unit_variance() {
        let rng = crate::rng::RngStream::new(3, 9);
        let (nx, ny) = (200, 200);
        let mut n = vec![0.0f32; nx * ny];
        rng.fill_normal(0, &mut n);
        let mut tmp = Vec::new();
        correlate_noise(&mut n, nx, &mut tmp);
        let inner: Vec<f32> = (2..ny - 2)
            .flat_map(|y| (2..nx - 2).map(move |x| (y, x)))
            .map(|(y, x)| n[y * nx + x])
            .collect();
        let var = inner.iter().map(|v| v * v).sum::<f32>() / inner.len() as f32;
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
