//! Line charts for training curves, with an optional second y axis.

use super::canvas::{clip_segment, Canvas, Rgb};
use super::font::{self, ADVANCE};
use super::{PictureError, Result};

/// Distinct, colour-blind-friendlier defaults for series colours.
pub const PALETTE: [Rgb; 8] = [
    Rgb(31, 119, 180),
    Rgb(230, 110, 0),
    Rgb(44, 160, 44),
    Rgb(214, 39, 40),
    Rgb(148, 103, 189),
    Rgb(140, 86, 75),
    Rgb(23, 190, 207),
    Rgb(227, 119, 194),
];

const BACKGROUND: Rgb = Rgb::WHITE;
const INK: Rgb = Rgb(30, 30, 30);
const GRID: Rgb = Rgb(228, 228, 228);
const NO_DATA: Rgb = Rgb(150, 150, 150);
const MARGIN: i64 = 12;
const TICK_LEN: i64 = 5;
const LABEL_GAP: i64 = 4;
/// Above this, labels would not fit any sensible picture; it also keeps all
/// layout arithmetic far from overflow.
const MAX_TEXT_SCALE: usize = 16;

/// Which y axis a series is measured against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Axis {
    #[default]
    Left,
    Right,
}

/// One curve.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub axis: Axis,
    /// (x, y) pairs joined in the order given; points with a non-finite
    /// coordinate (or y <= 0 on a log axis) are left out.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, color: Rgb, axis: Axis, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color,
            axis,
            points,
        }
    }
}

/// What to draw. Empty strings leave the corresponding text out.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotSpec {
    pub title: String,
    pub x_label: String,
    /// Drawn above the left axis (the font has no vertical text).
    pub left_label: String,
    /// Drawn above the right axis, which exists only if a series uses it.
    pub right_label: String,
    pub series: Vec<Series>,
    /// Logarithmic left axis, for losses that fall over decades.
    pub left_log: bool,
    pub width: usize,
    pub height: usize,
    /// Font scale of labels; the title is drawn one step larger.
    pub text_scale: usize,
}

impl Default for PlotSpec {
    fn default() -> Self {
        PlotSpec {
            title: String::new(),
            x_label: String::new(),
            left_label: String::new(),
            right_label: String::new(),
            series: Vec::new(),
            left_log: false,
            width: 900,
            height: 500,
            text_scale: 2,
        }
    }
}

/// A tick step of the form mantissa × 10^exp, mantissa in {1, 2, 5}.
#[derive(Clone, Copy, Debug)]
struct Step {
    mantissa: f64,
    exp: i32,
}

impl Step {
    fn value(self) -> f64 {
        self.mantissa * pow10(self.exp)
    }

    /// The k-th multiple of the step.
    fn tick(self, k: f64) -> f64 {
        // Turns -0.0 into 0.0 so that no label reads "-0".
        times_pow10(k * self.mantissa, self.exp) + 0.0
    }
}

/// m × 10^e. Dividing by an exact power of ten for negative exponents gives
/// the double nearest the decimal (3 × 0.1 would give 0.30000000000000004),
/// so labels print cleanly; the last branch keeps subnormal results from
/// underflowing to zero through an infinite divisor.
fn times_pow10(m: f64, e: i32) -> f64 {
    if e >= 0 {
        m * 10f64.powi(e)
    } else if e >= -300 {
        m / 10f64.powi(-e)
    } else {
        m * 1e-300 / 10f64.powi(-e - 300)
    }
}

fn pow10(e: i32) -> f64 {
    times_pow10(1.0, e)
}

/// Tolerance, in units of the step, for ticks that sit on the range ends but
/// miss them by rounding.
const K_EPS: f64 = 1e-9;

/// The smallest 1-2-5 step giving at most `max_ticks` ticks, with the first
/// and last tick multipliers. `expand` counts ticks on the smallest multiple
/// range that covers `lo..hi`, otherwise only the multiples inside it.
fn choose_step(lo: f64, hi: f64, max_ticks: usize, expand: bool) -> Option<(Step, f64, f64)> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) || max_ticks == 0 {
        return None;
    }
    let raw = span / max_ticks as f64;
    if raw <= 0.0 {
        return None;
    }
    let e0 = raw.log10().floor() as i32;
    for exp in e0.saturating_sub(1)..=e0.saturating_add(2) {
        for mantissa in [1.0, 2.0, 5.0] {
            let step = Step { mantissa, exp };
            let sv = step.value();
            if !(sv.is_finite() && sv > 0.0) {
                continue;
            }
            let (kmin, kmax) = if expand {
                ((lo / sv + K_EPS).floor(), (hi / sv - K_EPS).ceil())
            } else {
                ((lo / sv - K_EPS).ceil(), (hi / sv + K_EPS).floor())
            };
            let count = kmax - kmin + 1.0;
            if count.is_finite() && count <= max_ticks as f64 {
                return Some((step, kmin, kmax));
            }
        }
    }
    None
}

fn step_ticks(step: Step, kmin: f64, kmax: f64) -> Vec<f64> {
    let n = (kmax - kmin).max(-1.0) + 1.0;
    (0..n as usize).map(|i| step.tick(kmin + i as f64)).collect()
}

/// "Nice" tick values inside `lo..=hi`: the multiples of the smallest step
/// 1, 2 or 5 × 10^k that gives at most `max_ticks` of them. Empty for
/// non-finite input or `max_ticks == 0`; the single value when `lo == hi`.
pub fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || max_ticks == 0 {
        return Vec::new();
    }
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if lo == hi {
        return vec![lo];
    }
    match choose_step(lo, hi, max_ticks, false) {
        Some((step, kmin, kmax)) => step_ticks(step, kmin, kmax),
        None => Vec::new(),
    }
}

/// A tick label with as many decimals as the step needs; scientific notation
/// once fixed notation would get long.
fn linear_label(v: f64, step: Step) -> String {
    let decimals = (-step.exp).max(0) as usize;
    if decimals > 4 || v.abs() >= 1e6 {
        if v == 0.0 {
            return "0".to_string();
        }
        format!("{v:e}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn log_label(v: f64) -> String {
    if (1e-4..1e6).contains(&v) {
        let decimals = (-(v.log10() + K_EPS).floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:e}")
    }
}

/// One axis: its end values, and where its ticks go.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Scale {
    /// Position of `v` along the axis, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn widest_label(&self, scale: usize) -> i64 {
        self.ticks
            .iter()
            .map(|(_, label)| px(font::text_width(label, scale)))
            .max()
            .unwrap_or(0)
    }

    /// A linear axis that starts and ends on a tick, with at most
    /// `max_ticks` ticks (at least three, so any range has a solution).
    fn linear(lo: f64, hi: f64, max_ticks: usize) -> Scale {
        let (lo, hi) = if lo == hi {
            // A flat series still needs a range around it.
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo - d, hi + d)
        } else {
            (lo, hi)
        };
        if let Some((step, kmin, kmax)) = choose_step(lo, hi, max_ticks.max(3), true) {
            let ticks = step_ticks(step, kmin, kmax);
            if let (Some(&first), Some(&last)) = (ticks.first(), ticks.last()) {
                if first < last && first.is_finite() && last.is_finite() {
                    return Scale {
                        lo: first,
                        hi: last,
                        log: false,
                        ticks: ticks.into_iter().map(|v| (v, linear_label(v, step))).collect(),
                    };
                }
            }
        }
        // Ranges at the edge of f64 (spans that overflow, subnormals): label
        // just the ends rather than fail on data that is finite.
        Scale {
            lo,
            hi,
            log: false,
            ticks: vec![(lo, format!("{lo:.3e}")), (hi, format!("{hi:.3e}"))],
        }
    }

    /// A log axis from the decade at or below `lo` to the decade at or
    /// above `hi` (`0 < lo <= hi`).
    fn log(lo: f64, hi: f64, max_ticks: usize) -> Scale {
        let max_ticks = max_ticks.max(2);
        // Clamped so that both ends are finite and non-zero.
        let d_lo = (lo.log10().floor() as i32).clamp(-323, 307);
        let d_hi = (hi.log10().ceil() as i32).clamp(d_lo + 1, 308);
        let decades = (d_hi - d_lo) as usize;
        let decade = |d: i32, m: f64| times_pow10(m, d);
        let mut values = Vec::new();
        if 3 * decades < max_ticks {
            // Few decades: 1-2-5 within each, so the axis is not bare.
            for d in d_lo..d_hi {
                for m in [1.0, 2.0, 5.0] {
                    values.push(decade(d, m));
                }
            }
            values.push(decade(d_hi, 1.0));
        } else {
            let stride = (decades + 1).div_ceil(max_ticks).max(1);
            let mut d = d_lo;
            while d <= d_hi {
                values.push(decade(d, 1.0));
                d = d.saturating_add(stride as i32);
            }
        }
        Scale {
            lo: decade(d_lo, 1.0),
            hi: decade(d_hi, 1.0),
            log: true,
            ticks: values.into_iter().map(|v| (v, log_label(v))).collect(),
        }
    }
}

fn px(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Finite-data extent of the points that will be drawn.
#[derive(Default)]
struct Extent {
    x: Option<(f64, f64)>,
    left: Option<(f64, f64)>,
    right: Option<(f64, f64)>,
}

fn widen(range: &mut Option<(f64, f64)>, v: f64) {
    *range = Some(match *range {
        Some((lo, hi)) => (lo.min(v), hi.max(v)),
        None => (v, v),
    });
}

fn usable(spec: &PlotSpec, series: &Series, (x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && !(spec.left_log && series.axis == Axis::Left && y <= 0.0)
}

/// The plot rectangle, inclusive pixel bounds.
struct Frame {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Frame {
    fn x_at(&self, f: f64) -> f64 {
        self.x0 as f64 + f * (self.x1 - self.x0) as f64
    }

    fn y_at(&self, f: f64) -> f64 {
        self.y1 as f64 - f * (self.y1 - self.y0) as f64
    }
}

/// Greedy rows of legend entries (series index, entry width) that fit `avail`.
fn legend_rows(names: &[String], scale: usize, avail: i64) -> Vec<Vec<(usize, i64)>> {
    let swatch = swatch_width(scale);
    let spacing = px(ADVANCE * scale * 3);
    let mut rows: Vec<Vec<(usize, i64)>> = Vec::new();
    let mut used = 0;
    for (i, name) in names.iter().enumerate() {
        let w = swatch + px(ADVANCE * scale) + px(font::text_width(name, scale));
        match rows.last_mut() {
            Some(row) if used + spacing + w <= avail => {
                row.push((i, w));
                used += spacing + w;
            }
            _ => {
                rows.push(vec![(i, w)]);
                used = w;
            }
        }
    }
    rows
}

fn swatch_width(scale: usize) -> i64 {
    px(ADVANCE * scale * 3)
}

fn row_width(row: &[(usize, i64)], scale: usize) -> i64 {
    let spacing = px(ADVANCE * scale * 3);
    row.iter().map(|&(_, w)| w).sum::<i64>() + spacing * (row.len() as i64 - 1).max(0)
}

/// Draws a line chart of `spec.series` against a shared x axis and a left
/// and, when any series asks for it, a right y axis.
pub fn line_plot(spec: &PlotSpec) -> Result<Canvas> {
    let s = spec.text_scale;
    if s == 0 || s > MAX_TEXT_SCALE {
        return Err(PictureError::invalid(format!(
            "plot text scale {s} is outside 1..={MAX_TEXT_SCALE}"
        )));
    }
    let mut canvas = Canvas::new(spec.width, spec.height, BACKGROUND)?;
    let (w, h) = (px(spec.width), px(spec.height));
    let ch = px(font::text_height(s));
    let title_scale = s + 1;

    let mut extent = Extent::default();
    for series in &spec.series {
        for &p in &series.points {
            if usable(spec, series, p) {
                widen(&mut extent.x, p.0);
                match series.axis {
                    Axis::Left => widen(&mut extent.left, p.1),
                    Axis::Right => widen(&mut extent.right, p.1),
                }
            }
        }
    }
    let has_left = spec.series.iter().any(|series| series.axis == Axis::Left);
    let has_right = spec.series.iter().any(|series| series.axis == Axis::Right);
    // With two axes, say which one each curve belongs to.
    let legend_names: Vec<String> = spec
        .series
        .iter()
        .map(|series| match series.axis {
            Axis::Right if has_left => format!("{} (right)", series.name),
            _ => series.name.clone(),
        })
        .collect();

    // Vertical layout first: the y ticks depend on the plot height, the
    // side margins on the y tick labels, and the x ticks on the plot width.
    let mut top = MARGIN;
    if !spec.title.is_empty() {
        top += px(font::text_height(title_scale)) + 10;
    }
    let axis_labels = !spec.left_label.is_empty() || (has_right && !spec.right_label.is_empty());
    if axis_labels {
        top += ch + 8;
    } else {
        // Room for half of the topmost tick label.
        top += ch / 2;
    }
    let legend = legend_rows(&legend_names, s, w - 2 * MARGIN);
    let row_h = ch + 6;
    let x_label_y_offset = TICK_LEN + LABEL_GAP + ch + 8;
    let mut bottom = x_label_y_offset;
    if !spec.x_label.is_empty() {
        bottom += ch + 8;
    }
    if !legend.is_empty() {
        bottom += 4 + row_h * legend.len() as i64;
    }
    bottom += MARGIN;
    let plot_h = h - top - bottom;
    if plot_h < 20 {
        return Err(PictureError::invalid(format!(
            "plot of {}x{} is too small for its text at scale {s}",
            spec.width, spec.height
        )));
    }

    let y_ticks = (plot_h / (3 * ch)).max(3) as usize;
    let left = extent.left.map(|(lo, hi)| {
        if spec.left_log {
            Scale::log(lo, hi, y_ticks)
        } else {
            Scale::linear(lo, hi, y_ticks)
        }
    });
    let right = extent.right.map(|(lo, hi)| Scale::linear(lo, hi, y_ticks));
    let side = |scale: &Option<Scale>| match scale {
        Some(sc) => MARGIN + sc.widest_label(s) + LABEL_GAP + TICK_LEN,
        None => MARGIN + px(ADVANCE * s * 2),
    };
    let frame = Frame {
        x0: side(&left),
        y0: top,
        x1: w - side(&right) - 1,
        y1: top + plot_h - 1,
    };
    let plot_w = frame.x1 - frame.x0 + 1;
    if plot_w < 20 {
        return Err(PictureError::invalid(format!(
            "plot of {}x{} is too narrow for its tick labels at scale {s}",
            spec.width, spec.height
        )));
    }
    let x_scale = extent.x.map(|(lo, hi)| {
        // Fewer ticks until the labels stop crowding each other.
        let mut n = (plot_w / px(ADVANCE * s * 8)).max(3) as usize;
        loop {
            let sc = Scale::linear(lo, hi, n);
            let gaps = sc.ticks.len().max(2) as i64 - 1;
            if sc.widest_label(s) + px(ADVANCE * s * 2) <= plot_w / gaps || n <= 3 {
                break sc;
            }
            n -= 1;
        }
    });

    // Title and axis names.
    if !spec.title.is_empty() {
        let tw = px(font::text_width(&spec.title, title_scale));
        canvas.draw_text((w - tw) / 2, MARGIN, &spec.title, title_scale, INK);
    }
    if axis_labels {
        let y = frame.y0 - ch - 8;
        canvas.draw_text(frame.x0, y, &spec.left_label, s, INK);
        if has_right {
            let rw = px(font::text_width(&spec.right_label, s));
            canvas.draw_text(frame.x1 - rw + 1, y, &spec.right_label, s, INK);
        }
    }

    // Grid under the data, frame over it.
    if let Some(xs) = &x_scale {
        for (v, _) in &xs.ticks {
            let x = frame.x_at(xs.frac(*v)).round() as i64;
            canvas.draw_line(x, frame.y0, x, frame.y1, GRID);
        }
    }
    if let Some(ys) = left.as_ref().or(right.as_ref()) {
        for (v, _) in &ys.ticks {
            let y = frame.y_at(ys.frac(*v)).round() as i64;
            canvas.draw_line(frame.x0, y, frame.x1, y, GRID);
        }
    }
    if let Some(xs) = &x_scale {
        for series in &spec.series {
            let ys = match series.axis {
                Axis::Left => left.as_ref(),
                Axis::Right => right.as_ref(),
            };
            if let Some(ys) = ys {
                draw_series(&mut canvas, spec, series, xs, ys, &frame);
            }
        }
    }
    canvas.draw_rect(frame.x0, frame.y0, plot_w, plot_h, INK);

    // Ticks and their labels.
    if let Some(xs) = &x_scale {
        for (v, label) in &xs.ticks {
            let x = frame.x_at(xs.frac(*v)).round() as i64;
            canvas.draw_line(x, frame.y1, x, frame.y1 + TICK_LEN, INK);
            let lw = px(font::text_width(label, s));
            // Kept inside the picture when an end label would stick out.
            let lx = (x - lw / 2).clamp(0, (w - lw).max(0));
            canvas.draw_text(lx, frame.y1 + TICK_LEN + LABEL_GAP, label, s, INK);
        }
    }
    for (scale, on_left) in [(&left, true), (&right, false)] {
        let Some(ys) = scale else { continue };
        for (v, label) in &ys.ticks {
            let y = frame.y_at(ys.frac(*v)).round() as i64;
            let lw = px(font::text_width(label, s));
            let ly = y - ch / 2;
            if on_left {
                canvas.draw_line(frame.x0 - TICK_LEN, y, frame.x0, y, INK);
                canvas.draw_text(frame.x0 - TICK_LEN - LABEL_GAP - lw, ly, label, s, INK);
            } else {
                canvas.draw_line(frame.x1, y, frame.x1 + TICK_LEN, y, INK);
                canvas.draw_text(frame.x1 + TICK_LEN + LABEL_GAP, ly, label, s, INK);
            }
        }
    }

    if x_scale.is_none() {
        let text = "no data";
        let tw = px(font::text_width(text, s));
        let x = frame.x0 + (plot_w - tw) / 2;
        let y = frame.y0 + (plot_h - ch) / 2;
        canvas.draw_text(x, y, text, s, NO_DATA);
    }

    let mut y = frame.y1 + x_label_y_offset;
    if !spec.x_label.is_empty() {
        let tw = px(font::text_width(&spec.x_label, s));
        canvas.draw_text(frame.x0 + (plot_w - tw) / 2, y, &spec.x_label, s, INK);
        y += ch + 8;
    }
    y += 4;
    let swatch = swatch_width(s);
    for row in &legend {
        let mut x = (w - row_width(row, s)) / 2;
        for &(i, entry_w) in row {
            let series = &spec.series[i];
            // A short thick stroke in the series colour, centred on the text.
            canvas.fill_rect(x, y + ch / 2 - 1, swatch, 3, series.color);
            canvas.draw_text(x + swatch + px(ADVANCE * s), y, &legend_names[i], s, INK);
            x += entry_w + px(ADVANCE * s * 3);
        }
        y += row_h;
    }
    Ok(canvas)
}

fn draw_series(canvas: &mut Canvas, spec: &PlotSpec, series: &Series, xs: &Scale, ys: &Scale, frame: &Frame) {
    let bounds = (frame.x0 as f64, frame.y0 as f64, frame.x1 as f64, frame.y1 as f64);
    let mut points = series
        .points
        .iter()
        .filter(|&&p| usable(spec, series, p))
        .map(|&(x, y)| (frame.x_at(xs.frac(x)), frame.y_at(ys.frac(y))));
    let Some(mut prev) = points.next() else {
        return;
    };
    let mut lone = true;
    for p in points {
        lone = false;
        if let Some((a, b)) = clip_segment(prev, p, bounds) {
            canvas.draw_line(
                a.0.round() as i64,
                a.1.round() as i64,
                b.0.round() as i64,
                b.1.round() as i64,
                series.color,
            );
        }
        prev = p;
    }
    if lone {
        // A single point would be one invisible pixel without a marker.
        let (x, y) = (prev.0.round() as i64, prev.1.round() as i64);
        canvas.fill_rect(x - 2, y - 2, 5, 5, series.color);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_nice_multiple(v: f64, step: f64) -> bool {
        let k = v / step;
        (k - k.round()).abs() < 1e-6
    }

    fn mantissa(step: f64) -> f64 {
        step / pow10((step.log10() + 1e-9).floor() as i32)
    }

    #[test]
    fn nice_ticks_are_1_2_5_steps_inside_the_range() {
        for &(lo, hi, max) in &[
            (0.013, 0.97, 6),
            (0.013, 0.97, 10),
            (0.0, 100.0, 5),
            (-3.7, 12.2, 8),
            (1e-7, 3e-6, 5),
            (12345.0, 12399.0, 4),
            (0.013, 0.014, 5),
        ] {
            let t = nice_ticks(lo, hi, max);
            assert!(t.len() >= 2 && t.len() <= max, "{lo}..{hi} max {max}: {t:?}");
            assert!(t.iter().all(|&v| v >= lo && v <= hi), "{lo}..{hi}: {t:?}");
            let step = t[1] - t[0];
            let m = mantissa(step);
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|&n| (m - n).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
            for pair in t.windows(2) {
                assert!(((pair[1] - pair[0]) - step).abs() < step * 1e-6, "{t:?}");
            }
            assert!(t.iter().all(|&v| is_nice_multiple(v, step)), "{t:?}");
        }
        assert_eq!(nice_ticks(0.013, 0.97, 6), vec![0.2, 0.4, 0.6, 0.8]);
        assert_eq!(
            nice_ticks(0.0, 1.0, 11),
            vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        );
    }

    #[test]
    fn nice_ticks_edge_cases() {
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).is_empty());
        assert!(nice_ticks(0.0, 1.0, 0).is_empty());
        assert_eq!(nice_ticks(2.5, 2.5, 5), vec![2.5]);
        assert_eq!(nice_ticks(1.0, 0.0, 3), nice_ticks(0.0, 1.0, 3));
        assert!(nice_ticks(-1e308, 1e308, 5).is_empty());
        assert!(!nice_ticks(-0.5, 0.5, 1).is_empty());
        assert!(nice_ticks(-1.0, 1.0, 5).iter().all(|v| v.to_string() != "-0"));
    }

    #[test]
    fn linear_scale_covers_data_and_labels_cleanly() {
        let sc = Scale::linear(0.013, 0.97, 6);
        assert!(sc.lo <= 0.013 && sc.hi >= 0.97);
        let labels: Vec<&str> = sc.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, vec!["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let flat = Scale::linear(3.0, 3.0, 5);
        assert!(flat.lo < 3.0 && flat.hi > 3.0);
        let tiny = Scale::linear(1e-6, 5e-6, 5);
        assert!(tiny.ticks.iter().any(|(_, l)| l.contains('e')), "{:?}", tiny.ticks);
        let huge = Scale::linear(-1e308, 1e308, 5);
        assert_eq!(huge.ticks.len(), 2);
    }

    #[test]
    fn log_scale_spans_whole_decades() {
        let sc = Scale::log(0.003, 0.9, 8);
        assert_eq!((sc.lo, sc.hi), (0.001, 1.0));
        let labels: Vec<&str> = sc.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, vec!["0.001", "0.01", "0.1", "1"]);
        let fine = Scale::log(0.2, 0.9, 8);
        let labels: Vec<&str> = fine.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, vec!["0.1", "0.2", "0.5", "1"]);
        let wide = Scale::log(1e-12, 1e3, 5);
        assert!(wide.ticks.len() <= 5, "{:?}", wide.ticks);
        let subnormal = Scale::log(5e-324, 5e-324, 5);
        assert!(subnormal.lo > 0.0 && subnormal.hi.is_finite());
    }

    fn training_spec() -> PlotSpec {
        let loss: Vec<(f64, f64)> = (0..200).map(|i| (i as f64, 1.0 / (1.0 + i as f64 * 0.1))).collect();
        let mut val: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 * 10.0, 1.2 / (1.0 + i as f64))).collect();
        val[3].1 = f64::NAN;
        val[7].0 = f64::INFINITY;
        val[9].1 = -1.0; // dropped on the log axis
        let psnr: Vec<(f64, f64)> = (0..200).map(|i| (i as f64, 20.0 + (i as f64).sqrt())).collect();
        PlotSpec {
            title: "Training".into(),
            x_label: "step".into(),
            left_label: "loss".into(),
            right_label: "PSNR (dB)".into(),
            series: vec![
                Series::new("train loss", PALETTE[0], Axis::Left, loss),
                Series::new("val loss", PALETTE[1], Axis::Left, val),
                Series::new("psnr", PALETTE[2], Axis::Right, psnr),
                Series::new("empty", PALETTE[3], Axis::Left, Vec::new()),
            ],
            left_log: true,
            ..PlotSpec::default()
        }
    }

    fn count(canvas: &Canvas, color: Rgb) -> usize {
        canvas
            .pixels()
            .chunks_exact(3)
            .filter(|p| p == &[color.0, color.1, color.2])
            .count()
    }

    #[test]
    fn line_plot_draws_series_with_nan_and_empty() {
        for log in [true, false] {
            let spec = PlotSpec {
                left_log: log,
                ..training_spec()
            };
            let c = line_plot(&spec).unwrap();
            assert_eq!((c.width(), c.height()), (900, 500));
            for color in &PALETTE[..3] {
                assert!(count(&c, *color) > 100, "series colour {color:?} missing");
            }
        }
    }

    #[test]
    fn line_plot_without_data_draws_frame_and_message() {
        let spec = PlotSpec {
            title: "nothing yet".into(),
            series: vec![
                Series::new("a", PALETTE[0], Axis::Left, vec![]),
                Series::new("b", PALETTE[1], Axis::Right, vec![(f64::NAN, 1.0)]),
            ],
            width: 400,
            height: 300,
            ..PlotSpec::default()
        };
        let c = line_plot(&spec).unwrap();
        assert_eq!((c.width(), c.height()), (400, 300));
        assert!(count(&c, NO_DATA) > 0);
        assert!(count(&c, INK) > 0);
        let bare = line_plot(&PlotSpec::default()).unwrap();
        assert!(count(&bare, NO_DATA) > 0);
    }

    #[test]
    fn line_plot_handles_single_points_flat_lines_and_right_only() {
        let spec = PlotSpec {
            series: vec![
                Series::new("one", PALETTE[0], Axis::Right, vec![(5.0, 2.0)]),
                Series::new("flat", PALETTE[1], Axis::Right, vec![(5.0, 2.0), (5.0, 2.0)]),
            ],
            left_log: true,
            width: 300,
            height: 200,
            text_scale: 1,
            ..PlotSpec::default()
        };
        let c = line_plot(&spec).unwrap();
        assert!(count(&c, PALETTE[0]) >= 9);
    }

    #[test]
    fn line_plot_rejects_what_cannot_be_drawn() {
        let tiny = PlotSpec {
            width: 60,
            height: 40,
            ..training_spec()
        };
        assert!(line_plot(&tiny).is_err());
        assert!(line_plot(&PlotSpec {
            text_scale: 0,
            ..PlotSpec::default()
        })
        .is_err());
        assert!(line_plot(&PlotSpec {
            width: 0,
            ..PlotSpec::default()
        })
        .is_err());
    }
}
