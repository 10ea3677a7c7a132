//! The fixed 3D sinusoidal positional table of MODEL.md §5.3.

use super::config::ModelConfig;

/// One axis: `[sin(p·f_0) … sin(p·f_{h−1}), cos(p·f_0) … cos(p·f_{h−1})]`,
/// `h = ⌊m/2⌋`, `f_j = 10000^(−j/h)`, zero-padded to `m`.
fn axis_row(p: usize, m: usize, out: &mut [f64]) {
    let half = m / 2;
    out.iter_mut().for_each(|v| *v = 0.0);
    for j in 0..half {
        let f = 10000f64.powf(-(j as f64) / half as f64);
        out[j] = (p as f64 * f).sin();
        out[half + j] = (p as f64 * f).cos();
    }
}

/// The `N × E` table, row-major, in f64: token `(dp, hp, wp)` gets
/// `[row(dp; Ez) | row(hp; Ey) | row(wp; Ex)]`.
pub fn positional_table(c: &ModelConfig) -> Vec<f64> {
    let e = c.embed_dim;
    let (ex, ey) = (e / 3, e / 3);
    let ez = e - ex - ey;
    let [dp, hp, wp] = c.grid();
    let mut t = vec![0.0; dp * hp * wp * e];
    for d in 0..dp {
        for h in 0..hp {
            for w in 0..wp {
                let n = (d * hp + h) * wp + w;
                let row = &mut t[n * e..(n + 1) * e];
                axis_row(d, ez, &mut row[..ez]);
                axis_row(h, ey, &mut row[ez..ez + ey]);
                axis_row(w, ex, &mut row[ez + ey..]);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_of_spec_5_3() {
        let c = ModelConfig {
            superpatch_size: [2, 3, 4],
            patch_size: [1, 1, 1],
            embed_dim: 10,
            ..ModelConfig::tiny()
        };
        let t = positional_table(&c);
        let want = [0.0, 0.0, 1.0, 1.0, 0.8415, 0.5403, 0.0, 0.8415, 0.5403, 0.0];
        for (a, b) in t[50..60].iter().zip(want) {
            assert!((a - b).abs() < 5e-5, "{:?}", &t[50..60]);
        }
    }
}
