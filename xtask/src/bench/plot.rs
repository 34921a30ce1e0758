//! cost.svg: CPU per pass against cgroup count for the three collection modes, log-log; with a
//! baseline, its curves beside them in lighter colours.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

const SERIES: [(&str, &str, RGBColor); 3] = [
    (
        "baseline",
        "(a) cAdvisor-style: every file, every pass",
        RED,
    ),
    ("cgroupfs", "(b) collector, cgroupfs every pass", BLUE),
    (
        "ebpf",
        "(c) collector, eBPF at 1 s (cgroupfs every 10 s)",
        GREEN,
    ),
];

/// One curve: its points, label, colour and line width.
type Curve = (Vec<(f64, f64)>, String, RGBAColor, u32);

/// (cgroups, median ms per pass) of one mode, by cgroup count.
fn points(rows: &[Value], mode: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r["mode"] == mode)
        .filter_map(|r| {
            Some((
                r["cgroups"].as_f64()?,
                r["pass_us"]["median"].as_f64()? / 1e3,
            ))
        })
        .filter(|(n, ms)| *n > 0.0 && *ms > 0.0)
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `old`: the baseline's rows and its name, drawn as thin lighter lines.
pub fn cost_per_pass(
    rows: &[Value],
    old: Option<(&str, &[Value])>,
    path: &Path,
) -> Result<(), String> {
    let mut series: Vec<Curve> = SERIES
        .iter()
        .map(|(mode, label, colour)| (points(rows, mode), label.to_string(), colour.to_rgba(), 2))
        .collect();
    if let Some((rev, old_rows)) = old {
        for (mode, label, colour) in SERIES {
            let light = colour.mix(0.45);
            series.push((points(old_rows, mode), format!("{label}, {rev}"), light, 1));
        }
    }
    let all = series.iter().flat_map(|(p, ..)| p.iter());
    let (x_max, y_min, y_max) = all.fold((1.0f64, f64::MAX, 0.0f64), |(x, lo, hi), (n, ms)| {
        (x.max(*n), lo.min(*ms), hi.max(*ms))
    });
    if y_max <= 0.0 {
        return Err("no cost figures to plot".into());
    }
    let x_min = series
        .iter()
        .flat_map(|(p, ..)| p.first())
        .map(|(n, _)| *n)
        .fold(f64::MAX, f64::min);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "CPU time per sampling pass vs cgroup count",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale(),
                (y_min * 0.5..y_max * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("cgroups (log)")
            .x_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .y_desc("ms of CPU per pass (log)")
            .draw()?;
        for (points, label, colour, width) in &series {
            let (colour, width) = (*colour, *width);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(width),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(width))
                });
            let dot = 2 + 2 * width;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, dot, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| e.to_string())
}
