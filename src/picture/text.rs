//! Text on pictures: DejaVu Sans (fonts/DejaVuSans.ttf, shipped with its
//! licence in fonts/LICENSE) rasterised by plotters' ab_glyph backend, so a
//! headless training machine needs no system fonts.

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::canvas::{Canvas, Rgb};
use super::{PictureError, Result};

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
/// The family every picture's text uses.
pub const FAMILY: &str = "sans-serif";

/// Registers the font with plotters, once.
pub fn ensure_font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    if *LOADED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(PictureError::invalid("the built-in font could not be read"))
    }
}

/// The width in pixels of `text` at `size` pixels.
pub fn text_width(text: &str, size: u32) -> Result<usize> {
    ensure_font()?;
    let font = (FAMILY, size as f64).into_font();
    let (w, _) = font
        .box_size(text)
        .map_err(|e| PictureError::invalid(format!("measuring text: {e:?}")))?;
    Ok(w as usize)
}

/// Draws one line of `text` at `size` pixels with its top-left corner at
/// (`x`, `y`); what falls outside the canvas is not drawn.
pub fn draw_text(canvas: &mut Canvas, x: i64, y: i64, text: &str, size: u32, color: Rgb) -> Result<()> {
    ensure_font()?;
    let (w, h) = (canvas.width() as u32, canvas.height() as u32);
    let root = BitMapBackend::with_buffer(canvas.pixels_mut(), (w, h)).into_drawing_area();
    let style = (FAMILY, size as f64)
        .into_font()
        .color(&RGBColor(color.0, color.1, color.2));
    let at = (
        x.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        y.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
    );
    root.draw_text(text, &style, at)
        .map_err(|e| PictureError::invalid(format!("drawing text: {e}")))?;
    root.present()
        .map_err(|e| PictureError::invalid(format!("drawing text: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_measured_and_drawn_inside_its_box() {
        let w = text_width("loss 0.04", 16).unwrap();
        assert!(w > 30 && w < 120, "{w}");
        assert!(text_width("loss 0.04 and more", 16).unwrap() > w);
        let mut c = Canvas::new(200, 40, Rgb::WHITE).unwrap();
        draw_text(&mut c, 10, 10, "loss 0.04", 16, Rgb::BLACK).unwrap();
        let (mut lo, mut hi) = (usize::MAX, 0);
        for y in 0..40 {
            for x in 0..200 {
                if c.pixel(x, y) != Some(Rgb::WHITE) {
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
        }
        assert!(lo >= 10 && hi <= 10 + w + 2, "ink from {lo} to {hi}, width {w}");
        // Off the canvas: nothing drawn, no panic.
        let mut c = Canvas::new(20, 20, Rgb::WHITE).unwrap();
        draw_text(&mut c, 500, -300, "x", 16, Rgb::BLACK).unwrap();
        assert!((0..20).all(|y| (0..20).all(|x| c.pixel(x, y) == Some(Rgb::WHITE))));
    }
}
