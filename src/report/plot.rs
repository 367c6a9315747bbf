//! The figure of one run or of several overlaid: training loss (raw, light, and smoothed),
//! held-out NLL at each scoring (markers), and the learning rate in a small panel below. Drawn
//! with plotters' SVG backend (no system fonts or libraries: text is SVG `<text>`).

use super::run::RunData;
use crate::error::{Error, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (960, 640);
/// Height of the learning-rate panel.
const LR_PANEL: u32 = 170;
/// Matplotlib's tab10: distinct and readable on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const EVAL_SINGLE: RGBColor = RGBColor(214, 39, 40);
const FONT: &str = "sans-serif";

/// The SVG text of the figure for `runs` (one run: its curves; several: one colour each).
pub fn render_svg(runs: &[RunData], title: &str) -> Result<String> {
    if runs.is_empty() {
        return Err(Error::Usage("no runs to draw".into()));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, runs, title).map_err(|e| Error::Usage(format!("drawing the figure: {e}")))?;
        root.present()
            .map_err(|e| Error::Usage(format!("drawing the figure: {e}")))?;
    }
    Ok(svg)
}

/// Write the figure to `out` (through a temporary file, so a reader never sees half of one).
pub fn write_svg(runs: &[RunData], title: &str, out: &Path) -> Result<()> {
    let svg = render_svg(runs, title)?;
    let tmp = out.with_extension("svg.tmp");
    std::fs::write(&tmp, svg).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunData],
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 - LR_PANEL);
    let max_step = runs
        .iter()
        .filter_map(|r| r.steps.last().map(|s| s.step))
        .max()
        .unwrap_or(1)
        .max(1) as f64;

    // Loss axis: logarithmic when the curve spans more than a factor of 20 (a run that learns a
    // task well goes from ~3 to ~0.03), else linear with a margin.
    let values = runs.iter().flat_map(|r| {
        r.steps
            .iter()
            .map(|s| s.loss)
            .chain(r.evals().into_iter().map(|e| e.1))
    });
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let x = 0.0..max_step * 1.01;
    if lo > 0.0 && hi / lo > 20.0 {
        let y = (lo * 0.8..hi * 1.25).log_scale();
        loss_panel(
            &top,
            runs,
            x.clone(),
            y,
            "mean NLL per scored token (log scale)",
        )?;
    } else {
        let pad = ((hi - lo) * 0.06).max(1e-3);
        let y = (lo - pad).max(0.0)..hi + pad;
        loss_panel(&top, runs, x.clone(), y, "mean NLL per scored token")?;
    }
    lr_panel(&bottom, runs, x)?;
    Ok(())
}

fn step_label(v: &f64) -> String {
    format!("{v:.0}")
}

fn colour(runs: &[RunData], i: usize) -> RGBColor {
    if runs.len() == 1 {
        PALETTE[0]
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

fn loss_panel<DB: DrawingBackend, Y>(
    area: &DrawingArea<DB, Shift>,
    runs: &[RunData],
    x: std::ops::Range<f64>,
    y: Y,
    y_desc: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin_left(12)
        .margin_right(24)
        .margin_top(8)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_label_formatter(&step_label)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()?;
    let single = runs.len() == 1;
    for (i, run) in runs.iter().enumerate() {
        let c = colour(runs, i);
        let raw: Vec<(f64, f64)> = run.steps.iter().map(|s| (s.step as f64, s.loss)).collect();
        let smooth: Vec<(f64, f64)> = run
            .steps
            .iter()
            .zip(run.smoothed())
            .map(|(s, v)| (s.step as f64, v))
            .collect();
        let light = if single { 0.28 } else { 0.15 };
        let raw_series = chart.draw_series(LineSeries::new(raw, c.mix(light).stroke_width(1)))?;
        if single {
            raw_series
                .label("training loss (each step)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.mix(0.28)));
        }
        let label = if single {
            "training loss (smoothed)".to_string()
        } else {
            run.name.clone()
        };
        chart
            .draw_series(LineSeries::new(smooth, c.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(2)));
        let evals: Vec<(f64, f64)> = run.evals().iter().map(|&(s, v)| (s as f64, v)).collect();
        if !evals.is_empty() {
            let ec = if single { EVAL_SINGLE } else { c };
            chart.draw_series(LineSeries::new(evals.clone(), ec.mix(0.6).stroke_width(1)))?;
            let dots = chart.draw_series(
                evals
                    .iter()
                    .map(|&p| Circle::new(p, 4, ShapeStyle::from(ec).filled())),
            )?;
            if single {
                dots.label("held-out NLL").legend(move |(x, y)| {
                    Circle::new((x + 11, y), 4, ShapeStyle::from(EVAL_SINGLE).filled())
                });
            }
        }
    }
    if !single && runs.iter().any(|r| !r.evals().is_empty()) {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("held-out NLL (dots)")
            .legend(|(x, y)| Circle::new((x + 11, y), 4, ShapeStyle::from(BLACK).filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn lr_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[RunData],
    x: std::ops::Range<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let top = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.lr))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1e-3 };
    let mut chart = ChartBuilder::on(area)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(6)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("learning rate")
        .x_label_formatter(&step_label)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .y_labels(4)
        .y_label_formatter(&|v| {
            if *v == 0.0 {
                "0".into()
            } else {
                format!("{v:.1e}")
            }
        })
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let c = colour(runs, i);
        let pts: Vec<(f64, f64)> = run.steps.iter().map(|s| (s.step as f64, s.lr)).collect();
        chart.draw_series(LineSeries::new(pts, c.mix(0.8).stroke_width(2)))?;
    }
    Ok(())
}
