//! Line charts (training curves, ROC curves) through plotters, drawn into a
//! `Canvas` so they are written atomically like every picture, with an
//! optional logarithmic left axis and a second y axis on the right.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::canvas::{Canvas, Rgb};
use super::text::{ensure_font, FAMILY};
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

/// Text sizes are this many pixels per step of `PlotSpec::text_scale`.
const PX_PER_SCALE: u32 = 7;
const MAX_TEXT_SCALE: usize = 16;
const MAX_SIDE: usize = 8192;

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
    pub left_label: String,
    /// The right axis exists only if a series uses it.
    pub right_label: String,
    pub series: Vec<Series>,
    /// Logarithmic left axis, for losses that fall over decades.
    pub left_log: bool,
    pub width: usize,
    pub height: usize,
    /// Size of the labels, in steps of 7 pixels; the title is one step larger.
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

fn color(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

fn draw_err(e: impl std::fmt::Display) -> PictureError {
    PictureError::invalid(format!("drawing a chart: {e}"))
}

/// The usable points of `s` on its axis.
fn usable<'a>(spec: &'a PlotSpec, s: &'a Series) -> impl Iterator<Item = (f64, f64)> + 'a {
    let log = spec.left_log && s.axis == Axis::Left;
    s.points
        .iter()
        .copied()
        .filter(move |(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
}

/// `[lo, hi]` of `values`, widened when it is a single value.
fn span(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })?;
    Some(if log {
        // Whole decades around the data.
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
        )
    } else if hi > lo {
        let pad = 0.04 * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - pad, hi + pad)
    })
}

/// A tick label: whole numbers without decimals, others with at most three.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 * v.abs().max(1.0) {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// Draws `spec` into a fresh canvas.
pub fn line_plot(spec: &PlotSpec) -> Result<Canvas> {
    let s = spec.text_scale;
    if s == 0 || s > MAX_TEXT_SCALE {
        return Err(PictureError::invalid(format!(
            "plot text scale {s} is outside 1..={MAX_TEXT_SCALE}"
        )));
    }
    if spec.width < 100 || spec.height < 80 || spec.width > MAX_SIDE || spec.height > MAX_SIDE {
        return Err(PictureError::invalid(format!(
            "a plot of {}×{} pixels (100×80 to {MAX_SIDE}×{MAX_SIDE})",
            spec.width, spec.height
        )));
    }
    ensure_font()?;
    let mut canvas = Canvas::new(spec.width, spec.height, Rgb::WHITE)?;
    {
        let (w, h) = (spec.width as u32, spec.height as u32);
        let root = BitMapBackend::with_buffer(canvas.pixels_mut(), (w, h)).into_drawing_area();
        draw(spec, &root, PX_PER_SCALE * s as u32)?;
        root.present().map_err(draw_err)?;
    }
    Ok(canvas)
}

fn draw(spec: &PlotSpec, root: &DrawingArea<BitMapBackend, Shift>, size: u32) -> Result<()> {
    let text = (FAMILY, size as f64).into_font();
    let title = (FAMILY, (size + PX_PER_SCALE) as f64).into_font();
    let x = span(spec.series.iter().flat_map(|s| usable(spec, s).map(|p| p.0)), false);
    let left = span(
        spec.series
            .iter()
            .filter(|s| s.axis == Axis::Left)
            .flat_map(|s| usable(spec, s).map(|p| p.1)),
        spec.left_log,
    );
    let right = span(
        spec.series
            .iter()
            .filter(|s| s.axis == Axis::Right)
            .flat_map(|s| usable(spec, s).map(|p| p.1)),
        false,
    );
    let has_right = spec.series.iter().any(|s| s.axis == Axis::Right);
    let Some(x) = x else {
        // Nothing to plot yet: the title and a word, not an error.
        let area = if spec.title.is_empty() {
            root.clone()
        } else {
            root.titled(&spec.title, title.clone()).map_err(draw_err)?
        };
        let (w, h) = area.dim_in_pixel();
        area.draw_text(
            "no data yet",
            &text.color(&RGBColor(120, 120, 120)),
            (w as i32 / 2 - 4 * size as i32, h as i32 / 2),
        )
        .map_err(draw_err)?;
        return Ok(());
    };
    let left = left.unwrap_or((0.0, 1.0));
    let right = right.unwrap_or((0.0, 1.0));
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(3 * size / 2)
        .x_label_area_size(3 * size)
        .y_label_area_size(5 * size)
        .right_y_label_area_size(if has_right { 5 * size } else { 0 });
    if !spec.title.is_empty() {
        builder.caption(&spec.title, title);
    }
    // The two kinds of left axis are two chart types: one body for both.
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart.set_secondary_coord(x.0..x.1, right.0..right.1);
            chart
                .configure_mesh()
                .x_desc(spec.x_label.as_str())
                .y_desc(spec.left_label.as_str())
                .x_label_formatter(&tick)
                .label_style(text.clone())
                .axis_desc_style(text.clone())
                .light_line_style(RGBColor(238, 238, 238))
                .bold_line_style(RGBColor(215, 215, 215))
                .draw()
                .map_err(draw_err)?;
            if has_right {
                chart
                    .configure_secondary_axes()
                    .y_desc(spec.right_label.as_str())
                    .y_label_formatter(&tick)
                    .label_style(text.clone())
                    .axis_desc_style(text.clone())
                    .draw()
                    .map_err(draw_err)?;
            }
            for s in &spec.series {
                let c = color(s.color);
                let name = match s.axis {
                    Axis::Right if spec.series.iter().any(|o| o.axis == Axis::Left) => format!("{} (right)", s.name),
                    _ => s.name.clone(),
                };
                let line = LineSeries::new(usable(spec, s), c.stroke_width(2));
                let drawn = match s.axis {
                    Axis::Left => chart.draw_series(line).map_err(draw_err)?,
                    Axis::Right => chart.draw_secondary_series(line).map_err(draw_err)?,
                };
                drawn
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 2 * size as i32, y)], c.stroke_width(2)));
            }
            if !spec.series.is_empty() {
                chart
                    .configure_series_labels()
                    .label_font(text.clone())
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()
                    .map_err(draw_err)?;
            }
        }};
    }
    if spec.left_log {
        finish!(builder
            .build_cartesian_2d(x.0..x.1, (left.0..left.1).log_scale())
            .map_err(draw_err)?);
    } else {
        finish!(builder.build_cartesian_2d(x.0..x.1, left.0..left.1).map_err(draw_err)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(c: &Canvas, rgb: Rgb) -> usize {
        c.pixels()
            .chunks_exact(3)
            .filter(|p| *p == [rgb.0, rgb.1, rgb.2])
            .count()
    }

    #[test]
    fn every_series_is_drawn_on_its_axis_and_bad_points_are_left_out() {
        let spec = PlotSpec {
            title: "curves".into(),
            x_label: "step".into(),
            left_label: "loss".into(),
            right_label: "PSNR".into(),
            left_log: true,
            series: vec![
                Series::new(
                    "loss",
                    PALETTE[0],
                    Axis::Left,
                    vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.1), (3.0, 0.0)],
                ),
                Series::new("psnr", PALETTE[3], Axis::Right, vec![(0.0, 3.0), (3.0, 12.0)]),
                Series::new("empty", PALETTE[2], Axis::Left, vec![]),
            ],
            ..PlotSpec::default()
        };
        let c = line_plot(&spec).unwrap();
        assert_eq!((c.width(), c.height()), (900, 500));
        assert!(count(&c, PALETTE[0]) > 200, "the loss curve");
        assert!(count(&c, PALETTE[3]) > 200, "the PSNR curve");
    }

    #[test]
    fn no_data_single_points_and_flat_lines_still_draw() {
        let empty = line_plot(&PlotSpec {
            title: "nothing yet".into(),
            ..PlotSpec::default()
        })
        .unwrap();
        assert!(count(&empty, Rgb::WHITE) < 900 * 500, "a title and a message");
        for points in [vec![(5.0, 2.0)], vec![(0.0, 1.0), (10.0, 1.0)]] {
            let c = line_plot(&PlotSpec {
                series: vec![Series::new("s", PALETTE[1], Axis::Right, points)],
                ..PlotSpec::default()
            })
            .unwrap();
            assert!(count(&c, PALETTE[1]) > 0);
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(&100.0), "100");
        assert_eq!(tick(&0.1), "0.1");
        assert_eq!(tick(&-2.5), "-2.5");
        assert_eq!(tick(&0.0), "0");
    }

    #[test]
    fn what_cannot_be_drawn_is_an_error() {
        for spec in [
            PlotSpec {
                text_scale: 0,
                ..PlotSpec::default()
            },
            PlotSpec {
                text_scale: 17,
                ..PlotSpec::default()
            },
            PlotSpec {
                width: 10,
                ..PlotSpec::default()
            },
            PlotSpec {
                height: 100_000,
                ..PlotSpec::default()
            },
        ] {
            assert!(line_plot(&spec).is_err());
        }
    }
}
