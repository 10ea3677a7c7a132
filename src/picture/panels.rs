//! Side-by-side image panels: input, masked input, reconstruction, error.

use super::canvas::{Canvas, Rgb};
use super::{text, PictureError, Result};

/// Dark grey rather than black, so that the black air around a CT slice
/// still shows where the panel ends.
const BACKGROUND: Rgb = Rgb(40, 40, 44);
const TITLE_COLOR: Rgb = Rgb(235, 235, 235);
const FRAME_COLOR: Rgb = Rgb(120, 120, 128);
const MARGIN: usize = 16;
/// Title size in pixels.
const TITLE_PX: u32 = 16;
const TITLE_GAP: usize = 6;

/// How values become colours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Colormap {
    /// Black at the low end of the range, white at the high end.
    #[default]
    Gray,
    /// Black → red → yellow → white: error magnitudes, where the eye should
    /// be drawn to the large ones.
    Heat,
}

impl Colormap {
    /// The colour of `value` for the range `lo..hi`: linear, clamped at both
    /// ends (so ±∞ land on the ends too). NaN gets a colour that the map never
    /// produces: red for [`Colormap::Gray`], cyan for [`Colormap::Heat`]
    /// (whose own middle is red). A range with `hi <= lo` maps everything
    /// below `hi` to the low end and the rest to the high end.
    pub fn map(self, value: f32, lo: f32, hi: f32) -> Rgb {
        if value.is_nan() {
            return self.nan_color();
        }
        // f64 so that a range such as -3e38..3e38 does not overflow.
        let (v, lo, hi) = (f64::from(value), f64::from(lo), f64::from(hi));
        let t = if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else if v < hi {
            0.0
        } else {
            1.0
        };
        match self {
            Colormap::Gray => Rgb::gray((t * 255.0).round() as u8),
            Colormap::Heat => {
                // Three equal legs of 255 steps: red rises, then green, then blue.
                let k = (t * 765.0).round() as i32;
                let leg = |start: i32| (k - start).clamp(0, 255) as u8;
                Rgb(leg(0), leg(255), leg(510))
            }
        }
    }

    /// The colour drawn for NaN values.
    pub fn nan_color(self) -> Rgb {
        match self {
            Colormap::Gray => Rgb::RED,
            Colormap::Heat => Rgb(0, 255, 255),
        }
    }
}

/// One picture in a row of panels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    /// Drawn above the picture.
    pub title: String,
    pub width: usize,
    pub height: usize,
    /// Row-major, `height` rows of `width` values.
    pub values: Vec<f32>,
    /// The values drawn as the two ends of the colour map; must be finite
    /// with `range.0 < range.1`.
    pub range: (f32, f32),
    pub colormap: Colormap,
}

impl Panel {
    /// A grey-scale panel.
    pub fn new(title: impl Into<String>, width: usize, height: usize, values: Vec<f32>, range: (f32, f32)) -> Panel {
        Panel {
            title: title.into(),
            width,
            height,
            values,
            range,
            colormap: Colormap::Gray,
        }
    }

    pub fn with_colormap(mut self, colormap: Colormap) -> Panel {
        self.colormap = colormap;
        self
    }

    fn validate(&self, index: usize) -> Result<()> {
        let name = |what: String| PictureError::invalid(format!("panel {index} ({:?}): {what}", self.title));
        if self.width == 0 || self.height == 0 {
            return Err(name(format!("size {}x{} has no pixels", self.width, self.height)));
        }
        let expected = self
            .width
            .checked_mul(self.height)
            .ok_or_else(|| name(format!("size {}x{} overflows", self.width, self.height)))?;
        if self.values.len() != expected {
            return Err(name(format!(
                "{}x{} needs {expected} values, got {}",
                self.width,
                self.height,
                self.values.len()
            )));
        }
        let (lo, hi) = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(name(format!("range ({lo}, {hi}) must be finite and increasing")));
        }
        Ok(())
    }
}

/// Where one panel goes on the canvas.
struct Placement {
    image_x: usize,
    title_x: usize,
}

/// Draws `panels` left to right, each upscaled `scale` times with nearest
/// neighbour and titled, on a dark background.
pub fn grayscale_panels(panels: &[Panel], scale: usize) -> Result<Canvas> {
    if panels.is_empty() {
        return Err(PictureError::invalid("no panels to draw"));
    }
    if scale == 0 {
        return Err(PictureError::invalid("panel scale must be at least 1"));
    }
    for (i, p) in panels.iter().enumerate() {
        p.validate(i)?;
    }
    let too_big = || PictureError::invalid("panels are too large to draw");

    let mut placements = Vec::with_capacity(panels.len());
    let mut x = MARGIN;
    let mut max_image_h = 0;
    for p in panels {
        let image_w = p.width.checked_mul(scale).ok_or_else(too_big)?;
        let image_h = p.height.checked_mul(scale).ok_or_else(too_big)?;
        let title_w = text::text_width(&p.title, TITLE_PX)?;
        // A title wider than its picture widens the column instead of
        // running into the neighbour.
        let column_w = image_w.max(title_w);
        placements.push(Placement {
            image_x: x + (column_w - image_w) / 2,
            title_x: x + (column_w - title_w) / 2,
        });
        max_image_h = max_image_h.max(image_h);
        x = x
            .checked_add(column_w)
            .and_then(|v| v.checked_add(MARGIN))
            .ok_or_else(too_big)?;
    }
    let title_h = TITLE_PX as usize + 4;
    let image_y = MARGIN + title_h + TITLE_GAP;
    let height = max_image_h.checked_add(image_y + MARGIN).ok_or_else(too_big)?;
    let mut canvas = Canvas::new(x, height, BACKGROUND)?;

    for (p, at) in panels.iter().zip(&placements) {
        text::draw_text(
            &mut canvas,
            at.title_x as i64,
            MARGIN as i64,
            &p.title,
            TITLE_PX,
            TITLE_COLOR,
        )?;
        let s = scale as i64;
        let (x0, y0) = (at.image_x as i64, image_y as i64);
        // The frame sits just outside the picture so no value pixel is hidden.
        canvas.draw_rect(
            x0 - 1,
            y0 - 1,
            p.width as i64 * s + 2,
            p.height as i64 * s + 2,
            FRAME_COLOR,
        );
        let (lo, hi) = p.range;
        for (row, values) in p.values.chunks_exact(p.width).enumerate() {
            for (col, &v) in values.iter().enumerate() {
                let color = p.colormap.map(v, lo, hi);
                canvas.fill_rect(x0 + col as i64 * s, y0 + row as i64 * s, s, s, color);
            }
        }
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_maps_ends_and_clamps() {
        let g = Colormap::Gray;
        assert_eq!(g.map(-1.0, -1.0, 3.0), Rgb::BLACK);
        assert_eq!(g.map(3.0, -1.0, 3.0), Rgb::WHITE);
        assert_eq!(g.map(1.0, -1.0, 3.0), Rgb::gray(128));
        assert_eq!(g.map(-100.0, -1.0, 3.0), Rgb::BLACK);
        assert_eq!(g.map(100.0, -1.0, 3.0), Rgb::WHITE);
        assert_eq!(g.map(f32::INFINITY, -1.0, 3.0), Rgb::WHITE);
        assert_eq!(g.map(f32::NEG_INFINITY, -1.0, 3.0), Rgb::BLACK);
        assert_eq!(g.map(f32::NAN, -1.0, 3.0), Rgb::RED);
        assert_eq!(g.map(-3e38, -3e38, 3e38), Rgb::BLACK);
    }

    #[test]
    fn heat_runs_black_red_yellow_white() {
        let h = Colormap::Heat;
        assert_eq!(h.map(0.0, 0.0, 3.0), Rgb::BLACK);
        assert_eq!(h.map(1.0, 0.0, 3.0), Rgb(255, 0, 0));
        assert_eq!(h.map(2.0, 0.0, 3.0), Rgb(255, 255, 0));
        assert_eq!(h.map(3.0, 0.0, 3.0), Rgb::WHITE);
        assert_eq!(h.map(9.0, 0.0, 3.0), Rgb::WHITE);
        let nan = h.map(f32::NAN, 0.0, 3.0);
        assert_eq!(nan, h.nan_color());
        assert_ne!(nan, Rgb::RED);
    }

    #[test]
    fn layout_size_follows_panels_scale_and_titles() {
        let a = Panel::new("A", 4, 3, vec![0.0; 12], (0.0, 1.0));
        let b = Panel::new("B", 5, 2, vec![0.5; 10], (0.0, 1.0)).with_colormap(Colormap::Heat);
        let c = grayscale_panels(&[a.clone(), b], 3).unwrap();
        let title_h = TITLE_PX as usize + 4;
        assert_eq!(c.width(), MARGIN + 12 + MARGIN + 15 + MARGIN);
        assert_eq!(c.height(), MARGIN + title_h + TITLE_GAP + 9 + MARGIN);

        // A long title widens its column.
        let long = Panel::new("A LONG TITLE", 4, 3, vec![0.0; 12], (0.0, 1.0));
        let c = grayscale_panels(&[long], 1).unwrap();
        assert_eq!(
            c.width(),
            2 * MARGIN + text::text_width("A LONG TITLE", TITLE_PX).unwrap()
        );

        let c = grayscale_panels(&[a], 1).unwrap();
        let column = 4.max(text::text_width("A", TITLE_PX).unwrap());
        assert_eq!(
            (c.width(), c.height()),
            (2 * MARGIN + column, MARGIN + title_h + TITLE_GAP + 3 + MARGIN)
        );
    }

    #[test]
    fn pixels_are_mapped_upscaled_and_nan_is_red() {
        let p = Panel::new("", 2, 2, vec![0.0, 1.0, f32::NAN, 2.0], (0.0, 1.0));
        let c = grayscale_panels(&[p], 2).unwrap();
        let (x0, y0) = (MARGIN, MARGIN + TITLE_PX as usize + 4 + TITLE_GAP);
        for dy in 0..2 {
            for dx in 0..2 {
                assert_eq!(c.pixel(x0 + dx, y0 + dy), Some(Rgb::BLACK));
                assert_eq!(c.pixel(x0 + 2 + dx, y0 + dy), Some(Rgb::WHITE));
                assert_eq!(c.pixel(x0 + dx, y0 + 2 + dy), Some(Rgb::RED));
                assert_eq!(c.pixel(x0 + 2 + dx, y0 + 2 + dy), Some(Rgb::WHITE));
            }
        }
        assert_eq!(c.pixel(x0 - 1, y0), Some(FRAME_COLOR));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let ok = Panel::new("ok", 2, 2, vec![0.0; 4], (0.0, 1.0));
        assert!(grayscale_panels(&[], 1).is_err());
        assert!(grayscale_panels(std::slice::from_ref(&ok), 0).is_err());
        assert!(grayscale_panels(&[Panel::new("", 2, 2, vec![0.0; 3], (0.0, 1.0))], 1).is_err());
        assert!(grayscale_panels(&[Panel::new("", 0, 2, vec![], (0.0, 1.0))], 1).is_err());
        assert!(grayscale_panels(&[Panel::new("", 2, 2, vec![0.0; 4], (1.0, 1.0))], 1).is_err());
        assert!(grayscale_panels(&[Panel::new("", 2, 2, vec![0.0; 4], (0.0, f32::NAN))], 1).is_err());
        assert!(grayscale_panels(std::slice::from_ref(&ok), usize::MAX).is_err());
        assert!(grayscale_panels(&[ok], 1 << 15).is_err());
        let msg = grayscale_panels(&[Panel::new("recon", 2, 2, vec![0.0; 3], (0.0, 1.0))], 1)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("recon") && msg.contains("needs 4 values, got 3"), "{msg}");
    }
}
