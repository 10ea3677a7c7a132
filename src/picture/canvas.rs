//! An RGB8 raster with clipped drawing primitives and atomic PNG output.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{PictureError, Result};

/// Refuses canvases above 2^28 pixels (768 MiB of RGB): anything that large
/// is a caller bug (a swapped dimension, a runaway scale), and failing with a
/// message beats an allocation abort.
const MAX_PIXELS: usize = 1 << 28;

/// An 8-bit sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    pub const RED: Rgb = Rgb(255, 0, 0);

    /// A neutral grey of brightness `v`.
    pub const fn gray(v: u8) -> Rgb {
        Rgb(v, v, v)
    }
}

/// An RGB8 image, row-major, three bytes per pixel, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A `width`×`height` canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Result<Canvas> {
        let n = checked_pixel_count(width, height)?;
        let mut pixels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            pixels.extend_from_slice(&[background.0, background.1, background.2]);
        }
        Ok(Canvas { width, height, pixels })
    }

    /// Wraps existing RGB8 bytes (row-major, `width * height * 3` long).
    pub fn from_rgb(width: usize, height: usize, pixels: Vec<u8>) -> Result<Canvas> {
        let n = checked_pixel_count(width, height)?;
        if pixels.len() != n * 3 {
            return Err(PictureError::invalid(format!(
                "{width}x{height} RGB canvas needs {} bytes, got {}",
                n * 3,
                pixels.len()
            )));
        }
        Ok(Canvas { width, height, pixels })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The raw RGB8 bytes, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The raw RGB8 bytes, to draw into.
    pub fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }

    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }

    /// The colour at (`x`, `y`), or `None` outside the canvas.
    pub fn pixel(&self, x: usize, y: usize) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        Some(Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]))
    }

    /// Sets one pixel; coordinates outside the canvas are ignored.
    pub fn set_pixel(&mut self, x: i64, y: i64, color: Rgb) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&[color.0, color.1, color.2]);
    }

    /// Fills the `w`×`h` rectangle whose top-left corner is (`x`, `y`),
    /// clipped to the canvas; non-positive sizes draw nothing.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        let x0 = x.max(0);
        let y0 = y.max(0);
        let x1 = x.saturating_add(w.max(0)).min(self.width as i64);
        let y1 = y.saturating_add(h.max(0)).min(self.height as i64);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let rgb = [color.0, color.1, color.2];
        for row in y0 as usize..y1 as usize {
            let start = (row * self.width + x0 as usize) * 3;
            let end = (row * self.width + x1 as usize) * 3;
            for px in self.pixels[start..end].chunks_exact_mut(3) {
                px.copy_from_slice(&rgb);
            }
        }
    }

    /// A one-pixel outline of the `w`×`h` rectangle at (`x`, `y`).
    pub fn draw_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        if w <= 0 || h <= 0 {
            return;
        }
        let right = x.saturating_add(w - 1);
        let bottom = y.saturating_add(h - 1);
        self.fill_rect(x, y, w, 1, color);
        self.fill_rect(x, bottom, w, 1, color);
        self.fill_rect(x, y, 1, h, color);
        self.fill_rect(right, y, 1, h, color);
    }

    /// The canvas as PNG file bytes (8-bit RGB).
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let w = u32::try_from(self.width)
            .map_err(|_| PictureError::invalid(format!("width {} does not fit a PNG", self.width)))?;
        let h = u32::try_from(self.height)
            .map_err(|_| PictureError::invalid(format!("height {} does not fit a PNG", self.height)))?;
        let encode_err = |e: png::EncodingError| PictureError::invalid(format!("PNG encoding failed: {e}"));
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(encode_err)?;
        writer.write_image_data(&self.pixels).map_err(encode_err)?;
        writer.finish().map_err(encode_err)?;
        Ok(bytes)
    }

    /// Writes the canvas as a PNG at `path` so that readers never see a half
    /// file: the bytes go to a hidden temporary file in the same directory
    /// (same file system, so the rename is atomic), which then replaces `path`.
    /// On failure the temporary file is removed and `path` is left untouched.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.encode_png()?;
        let tmp = temp_path_for(path)?;
        let result = write_synced(&tmp, &bytes).and_then(|()| fs::rename(&tmp, path));
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // Best effort: the write error is the one worth reporting.
                let _ = fs::remove_file(&tmp);
                Err(PictureError::io(path, e))
            }
        }
    }
}

fn checked_pixel_count(width: usize, height: usize) -> Result<usize> {
    if width == 0 || height == 0 {
        return Err(PictureError::invalid(format!(
            "canvas size {width}x{height} has no pixels"
        )));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_PIXELS => Ok(n),
        _ => Err(PictureError::invalid(format!(
            "canvas size {width}x{height} exceeds the limit of {MAX_PIXELS} pixels"
        ))),
    }
}

/// `.name.tmp.<pid>.<n>` beside `path`: the pid keeps concurrent processes
/// apart and the counter keeps threads of one process apart.
fn temp_path_for(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| PictureError::invalid(format!("{}: not a file path", path.display())))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = crate::tempname::temp_name(name, &format!("{}.{n}", std::process::id()));
    Ok(match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp_name),
        _ => PathBuf::from(tmp_name),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    // Without the sync a crash right after the rename could leave an empty
    // file under the final name on some file systems.
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(canvas: &Canvas, color: Rgb) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for y in 0..canvas.height() {
            for x in 0..canvas.width() {
                if canvas.pixel(x, y) == Some(color) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    #[test]
    fn new_rejects_empty_and_absurd_sizes() {
        assert!(Canvas::new(0, 5, Rgb::WHITE).is_err());
        assert!(Canvas::new(5, 0, Rgb::WHITE).is_err());
        assert!(Canvas::new(usize::MAX, 2, Rgb::WHITE).is_err());
        assert!(Canvas::new(1 << 20, 1 << 20, Rgb::WHITE).is_err());
        assert!(Canvas::from_rgb(2, 2, vec![0; 11]).is_err());
        let c = Canvas::new(3, 2, Rgb(1, 2, 3)).unwrap();
        assert_eq!(c.pixels().len(), 18);
        assert_eq!(c.pixel(2, 1), Some(Rgb(1, 2, 3)));
        assert_eq!(c.pixel(3, 1), None);
    }

    #[test]
    fn set_pixel_and_fill_rect_clip() {
        let mut c = Canvas::new(4, 3, Rgb::WHITE).unwrap();
        c.set_pixel(-1, 0, Rgb::BLACK);
        c.set_pixel(4, 0, Rgb::BLACK);
        c.set_pixel(0, 3, Rgb::BLACK);
        assert!(ink(&c, Rgb::BLACK).is_empty());
        c.fill_rect(-2, -2, 4, 4, Rgb::BLACK);
        assert_eq!(ink(&c, Rgb::BLACK), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
        c.fill_rect(3, 2, i64::MAX, i64::MAX, Rgb::RED);
        assert_eq!(ink(&c, Rgb::RED), vec![(3, 2)]);
        c.fill_rect(0, 0, -3, 2, Rgb::RED);
        assert_eq!(ink(&c, Rgb::RED).len(), 1);
    }

    #[test]
    fn png_round_trip_keeps_size_and_pixels() {
        let mut c = Canvas::new(7, 5, Rgb(10, 20, 30)).unwrap();
        c.set_pixel(0, 0, Rgb::RED);
        c.set_pixel(6, 4, Rgb(1, 2, 3));
        c.fill_rect(2, 1, 3, 2, Rgb::WHITE);

        let dir = std::env::temp_dir().join(format!("picture-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("round_trip.png");
        c.save_png(&path).unwrap();

        let decoder = png::Decoder::new(fs::File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(&buf[..info.buffer_size()], c.pixels());

        // Only the final file remains: the temporary one was renamed away.
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("round_trip.png")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_into_missing_directory_reports_path_and_leaves_nothing() {
        let c = Canvas::new(2, 2, Rgb::WHITE).unwrap();
        let path = std::env::temp_dir()
            .join(format!("picture-missing-{}", std::process::id()))
            .join("x.png");
        match c.save_png(&path) {
            Err(PictureError::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected an io error, got {other:?}"),
        }
        assert!(c.save_png("/").is_err());
    }
}
