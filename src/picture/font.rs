//! A 5×7 bitmap font drawn as ASCII art, so labels need no font files.
//!
//! Lowercase ASCII letters are drawn with the uppercase glyphs: at 5×7 pixels
//! a second alphabet would be barely distinguishable and doubles the table.
//! Characters without a glyph are drawn as a hollow box so that a missing
//! glyph is visible instead of silently vanishing.

use super::canvas::{Canvas, Rgb};

/// Ink columns of one glyph.
pub const GLYPH_WIDTH: usize = 5;
/// Ink rows of one glyph.
pub const GLYPH_HEIGHT: usize = 7;
/// Horizontal distance between the starts of two characters, in font pixels:
/// one blank column keeps neighbouring glyphs apart.
pub const ADVANCE: usize = GLYPH_WIDTH + 1;

type Glyph = [&'static str; GLYPH_HEIGHT];

const UNKNOWN: Glyph = ["#####", "#   #", "#   #", "#   #", "#   #", "#   #", "#####"];

/// Every drawable character. A linear table (rather than a match) lets the
/// tests walk all glyphs and check their shape.
pub(super) const GLYPHS: &[(char, Glyph)] = &[
    (' ', ["     ", "     ", "     ", "     ", "     ", "     ", "     "]),
    ('A', [" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"]),
    ('B', ["#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "]),
    ('C', [" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "]),
    ('D', ["#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "]),
    ('E', ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"]),
    ('F', ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "]),
    ('G', [" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"]),
    ('H', ["#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"]),
    ('I', [" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "]),
    ('J', ["  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "]),
    ('K', ["#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"]),
    ('L', ["#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"]),
    ('M', ["#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"]),
    ('N', ["#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"]),
    ('O', [" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "]),
    ('P', ["#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "]),
    ('Q', [" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"]),
    ('R', ["#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"]),
    ('S', [" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "]),
    ('T', ["#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "]),
    ('U', ["#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "]),
    ('V', ["#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "]),
    ('W', ["#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "]),
    ('X', ["#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"]),
    ('Y', ["#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "]),
    ('Z', ["#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"]),
    ('0', [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "]),
    ('1', ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "]),
    ('2', [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"]),
    ('3', ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "]),
    ('4', ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "]),
    ('5', ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "]),
    ('6', ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "]),
    ('7', ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "]),
    ('8', [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "]),
    ('9', [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "]),
    ('.', ["     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "]),
    (',', ["     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "]),
    (':', ["     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "]),
    (';', ["     ", " ##  ", " ##  ", "     ", " ##  ", "  #  ", " #   "]),
    ('-', ["     ", "     ", "     ", "#####", "     ", "     ", "     "]),
    ('+', ["     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "]),
    ('=', ["     ", "     ", "#####", "     ", "#####", "     ", "     "]),
    ('/', ["     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "]),
    ('\\', ["     ", "#    ", " #   ", "  #  ", "   # ", "    #", "     "]),
    ('(', ["   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "]),
    (')', [" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "]),
    ('[', [" ### ", " #   ", " #   ", " #   ", " #   ", " #   ", " ### "]),
    (']', [" ### ", "   # ", "   # ", "   # ", "   # ", "   # ", " ### "]),
    ('{', ["   ##", "  #  ", "  #  ", " #   ", "  #  ", "  #  ", "   ##"]),
    ('}', ["##   ", "  #  ", "  #  ", "   # ", "  #  ", "  #  ", "##   "]),
    ('%', ["##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"]),
    ('_', ["     ", "     ", "     ", "     ", "     ", "     ", "#####"]),
    ('\'', ["  #  ", "  #  ", " #   ", "     ", "     ", "     ", "     "]),
    ('"', [" # # ", " # # ", "     ", "     ", "     ", "     ", "     "]),
    ('`', [" #   ", "  #  ", "     ", "     ", "     ", "     ", "     "]),
    ('!', ["  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "     ", "  #  "]),
    ('?', [" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  "]),
    ('<', ["   # ", "  #  ", " #   ", "#    ", " #   ", "  #  ", "   # "]),
    ('>', [" #   ", "  #  ", "   # ", "    #", "   # ", "  #  ", " #   "]),
    ('*', ["     ", "  #  ", "# # #", " ### ", "# # #", "  #  ", "     "]),
    ('#', [" # # ", " # # ", "#####", " # # ", "#####", " # # ", " # # "]),
    ('|', ["  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "]),
    ('^', ["  #  ", " # # ", "#   #", "     ", "     ", "     ", "     "]),
    ('~', ["     ", "     ", " #   ", "# # #", "   # ", "     ", "     "]),
    ('&', [" ##  ", "#  # ", "# #  ", " #   ", "# # #", "#  # ", " ## #"]),
    ('@', [" ### ", "#   #", "# ###", "# # #", "# ###", "#    ", " ####"]),
    ('$', ["  #  ", " ####", "# #  ", " ### ", "  # #", "#### ", "  #  "]),
    ('×', ["     ", "#   #", " # # ", "  #  ", " # # ", "#   #", "     "]),
    ('σ', ["     ", "     ", " ####", "#  # ", "#  # ", "#  # ", " ##  "]),
    ('·', ["     ", "     ", "     ", "  #  ", "     ", "     ", "     "]),
];

/// The rows of the glyph drawn for `c`; the box for characters without one.
pub fn glyph(c: char) -> &'static [&'static str; GLYPH_HEIGHT] {
    // Only ASCII is folded: `char::to_uppercase` would turn σ into Σ.
    let c = c.to_ascii_uppercase();
    GLYPHS.iter().find(|(k, _)| *k == c).map_or(&UNKNOWN, |(_, rows)| rows)
}

/// Whether `c` has a glyph of its own (as opposed to the box).
pub fn has_glyph(c: char) -> bool {
    let c = c.to_ascii_uppercase();
    GLYPHS.iter().any(|(k, _)| *k == c)
}

/// Width in canvas pixels of `text` drawn at `scale`; no trailing gap, so
/// centring and right-alignment land on the ink.
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    if n == 0 {
        return 0;
    }
    n.saturating_mul(ADVANCE).saturating_sub(1).saturating_mul(scale)
}

/// Height in canvas pixels of one line of text at `scale`.
pub fn text_height(scale: usize) -> usize {
    GLYPH_HEIGHT.saturating_mul(scale)
}

/// Draws one line of `text` with its top-left corner at (`x`, `y`), each font
/// pixel as a `scale`×`scale` square; ink outside the canvas is clipped.
pub fn draw_text(canvas: &mut Canvas, x: i64, y: i64, text: &str, scale: usize, color: Rgb) {
    if scale == 0 {
        return;
    }
    let s = i64::try_from(scale).unwrap_or(i64::MAX);
    let advance = s.saturating_mul(ADVANCE as i64);
    let mut pen_x = x;
    for c in text.chars() {
        // Past the right edge nothing more can be visible.
        if pen_x >= canvas.width() as i64 {
            break;
        }
        for (row, line) in glyph(c).iter().enumerate() {
            for (col, ink) in line.bytes().enumerate() {
                if ink == b'#' {
                    let px = pen_x.saturating_add((col as i64).saturating_mul(s));
                    let py = y.saturating_add((row as i64).saturating_mul(s));
                    canvas.fill_rect(px, py, s, s, color);
                }
            }
        }
        pen_x = pen_x.saturating_add(advance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_seven_rows_of_five_ink_or_blank() {
        for (c, rows) in GLYPHS.iter().chain(std::iter::once(&('?', UNKNOWN))) {
            assert_eq!(rows.len(), GLYPH_HEIGHT, "glyph {c:?}");
            for row in rows {
                assert_eq!(row.chars().count(), GLYPH_WIDTH, "glyph {c:?} row {row:?}");
                assert!(row.chars().all(|p| p == '#' || p == ' '), "glyph {c:?} row {row:?}");
            }
        }
    }

    #[test]
    fn glyph_table_has_no_duplicates_and_covers_the_required_set() {
        for (i, (a, _)) in GLYPHS.iter().enumerate() {
            assert!(GLYPHS[i + 1..].iter().all(|(b, _)| a != b), "duplicate glyph {a:?}");
        }
        let required = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-+=/()[]%_'!?<>×σ·";
        for c in required.chars() {
            assert!(has_glyph(c), "missing glyph {c:?}");
        }
        // Every glyph except space must leave some ink, or it would look missing.
        for (c, rows) in GLYPHS {
            if *c != ' ' {
                assert!(rows.iter().any(|r| r.contains('#')), "blank glyph {c:?}");
            }
        }
    }

    #[test]
    fn lowercase_folds_to_uppercase_but_sigma_stays() {
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('z'), glyph('Z'));
        assert_ne!(glyph('σ'), &UNKNOWN);
        assert_eq!(glyph('€'), &UNKNOWN);
        assert!(!has_glyph('€'));
    }

    #[test]
    fn text_width_counts_advances_without_trailing_gap() {
        assert_eq!(text_width("", 3), 0);
        assert_eq!(text_width("A", 1), 5);
        assert_eq!(text_width("AB", 1), 11);
        assert_eq!(text_width("loss", 2), (4 * 6 - 1) * 2);
        // Multi-byte characters count once each.
        assert_eq!(text_width("×σ·", 1), 17);
        assert_eq!(text_height(3), 21);
    }

    #[test]
    fn drawn_text_ink_matches_measured_box() {
        let mut canvas = Canvas::new(40, 20, Rgb::WHITE).unwrap();
        draw_text(&mut canvas, 2, 3, "H1", 2, Rgb::BLACK);
        let (mut x_min, mut x_max, mut y_min, mut y_max) = (usize::MAX, 0, usize::MAX, 0);
        for y in 0..canvas.height() {
            for x in 0..canvas.width() {
                if canvas.pixel(x, y) == Some(Rgb::BLACK) {
                    x_min = x_min.min(x);
                    x_max = x_max.max(x);
                    y_min = y_min.min(y);
                    y_max = y_max.max(y);
                }
            }
        }
        assert_eq!((x_min, y_min), (2, 3));
        // 'H' and '1' both reach their bottom row; '1' ends in column 3 of 5.
        assert_eq!(y_max + 1 - y_min, text_height(2));
        assert_eq!(x_max + 1 - x_min, text_width("H1", 2) - 2);
    }

    #[test]
    fn text_off_canvas_is_clipped_without_panicking() {
        let mut canvas = Canvas::new(10, 10, Rgb::WHITE).unwrap();
        draw_text(&mut canvas, -7, -3, "WIDE TEXT", 3, Rgb::BLACK);
        draw_text(&mut canvas, i64::MAX - 2, i64::MIN, "X", usize::MAX, Rgb::BLACK);
        draw_text(&mut canvas, 0, 0, "X", 0, Rgb::BLACK);
    }
}
