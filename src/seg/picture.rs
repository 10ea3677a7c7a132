//! Overlay pictures of label maps on CT: a few axial slices (a quarter,
//! half and three quarters of the way through the classes' extent), the CT
//! alone, the prediction over it, and the truth over it when there is one.

use std::path::Path;

use crate::error::Result;
use crate::picture::text::draw_text;
use crate::picture::{Canvas, Rgb, PALETTE};

const MARGIN: usize = 12;
const TITLE: usize = 24;

fn class_color(c: u8) -> Rgb {
    PALETTE[(c as usize - 1) % PALETTE.len()]
}

/// The axial slices to show: through the labelled part of `labels`
/// (anywhere when nothing is labelled).
fn slices(labels: &[u8], shape: [usize; 3]) -> [usize; 3] {
    let plane = shape[1] * shape[2];
    let hit: Vec<usize> = (0..shape[0])
        .filter(|&z| labels[z * plane..(z + 1) * plane].iter().any(|&c| c > 0))
        .collect();
    let (lo, hi) = match (hit.first(), hit.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, shape[0] - 1),
    };
    [1, 2, 3].map(|q| lo + (hi - lo) * q / 4)
}

/// Writes the overlay of `pred` (and `truth`) class maps on `image`
/// (windowed to [0, 1]), all `D × H × W`, to `path`.
pub fn overlay_png(path: &Path, image: &[f32], pred: &[u8], truth: Option<&[u8]>, shape: [usize; 3]) -> Result<()> {
    let [_, h, w] = shape;
    let plane = h * w;
    let cols = 2 + usize::from(truth.is_some());
    let zs = slices(truth.unwrap_or(pred), shape);
    let width = MARGIN + cols * (w + MARGIN);
    let height = TITLE + MARGIN + zs.len() * (h + MARGIN);
    let mut canvas = Canvas::new(width, height, Rgb(40, 40, 44))?;
    let mut titles = vec!["CT", "prediction"];
    if truth.is_some() {
        titles.push("truth");
    }
    for (i, t) in titles.iter().enumerate() {
        draw_text(
            &mut canvas,
            (MARGIN + i * (w + MARGIN)) as i64,
            4,
            t,
            16,
            Rgb(235, 235, 235),
        )?;
    }
    for (row, &z) in zs.iter().enumerate() {
        let y0 = TITLE + MARGIN + row * (h + MARGIN);
        for col in 0..cols {
            let x0 = MARGIN + col * (w + MARGIN);
            let over = match col {
                1 => Some(pred),
                2 => truth,
                _ => None,
            };
            for y in 0..h {
                for x in 0..w {
                    let i = z * plane + y * w + x;
                    let g = (image[i].clamp(0.0, 1.0) * 255.0).round();
                    let c = over.map(|m| m[i]).unwrap_or(0);
                    let px = if c > 0 {
                        let k = class_color(c);
                        let mix = |a: u8| (0.45 * g + 0.55 * a as f32).round() as u8;
                        Rgb(mix(k.0), mix(k.1), mix(k.2))
                    } else {
                        Rgb::gray(g as u8)
                    };
                    canvas.set_pixel((x0 + x) as i64, (y0 + y) as i64, px);
                }
            }
        }
    }
    Ok(canvas.save_png(path)?)
}
