//! `--plot FILE.svg`: max/mean over time for every strategy, then the
//! connections per master for each strategy, one panel each.

use std::path::Path;

use plotters::prelude::*;

use super::Params;
use super::engine::{BALANCED, Report};

const STEP: usize = 5;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

pub(crate) fn draw(path: &Path, p: &Params, r: &Report) -> Result<(), String> {
    let panels = 2 + r.strategies.len();
    let rows = panels.div_ceil(2);
    let root = SVGBackend::new(path, (1200, 330 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows, 2));
    let minutes = r.seconds as f64 / 60.0;
    let x = |s: usize| s as f64 / 60.0;
    // One point per STEP seconds keeps the SVG small; the ratio keeps the
    // worst value of each step, so a one-second spike still shows.
    let ratio_points = |v: &[f64]| -> Vec<(f64, f64)> {
        v.chunks(STEP)
            .enumerate()
            .map(|(i, c)| (x(i * STEP), c.iter().copied().fold(0.0, f64::max)))
            .collect()
    };

    // Panel 1: max/mean for every strategy.
    let top = r
        .strategies
        .iter()
        .flat_map(|s| s.ratio.iter().copied())
        .fold(1.2, f64::max)
        .min(4.0);
    let mut chart = ChartBuilder::on(&areas[0])
        .caption(
            format!(
                "{}: max/mean connections across masters ({} nodes)",
                p.scenario.as_str(),
                p.nodes
            ),
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..minutes, 0.95..top + 0.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("max/mean")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, BALANCED), (minutes, BALANCED)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| e.to_string())?;
    for (i, s) in r.strategies.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                ratio_points(&s.ratio)
                    .into_iter()
                    .map(|(t, v)| (t, v.min(top))),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(s.strategy.name())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 16, ly)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;

    // Panel 2: the herd at the returning master, log scale.
    let herd_max = r
        .strategies
        .iter()
        .flat_map(|s| s.herd.iter().copied())
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 2.0;
    let mut chart = ChartBuilder::on(&areas[1])
        .caption(
            "new connections per second at the returning master",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..minutes, (1.0..herd_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("per second (log)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in r.strategies.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Worst second of each step; zero drawn as 1 (the axis floor).
        let points = s.herd.chunks(STEP).enumerate().map(|(k, c)| {
            let v = c.iter().copied().max().unwrap_or(0).max(1);
            (x(k * STEP), v as f64)
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.strategy.name())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 16, ly)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;

    // One panel per strategy: connections per master.
    let masters = r.masters;
    let ymax = r
        .strategies
        .iter()
        .flat_map(|s| s.per_master.iter().copied())
        .max()
        .unwrap_or(1) as f64
        * 1.05;
    for (i, s) in r.strategies.iter().enumerate() {
        let mut chart = ChartBuilder::on(&areas[i + 2])
            .caption(
                format!("{}: connections per master", s.strategy.name()),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..minutes, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .draw()
            .map_err(|e| e.to_string())?;
        for m in 0..masters {
            let color = COLORS[m % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.per_master
                        .chunks(masters)
                        .enumerate()
                        .step_by(STEP)
                        .map(|(t, row)| (x(t), row[m] as f64)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("master {m}"))
                .legend(move |(lx, ly)| {
                    PathElement::new(vec![(lx, ly), (lx + 16, ly)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
