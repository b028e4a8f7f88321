//! PNG charts of a suite: latency percentiles and throughput per system.
//! Text needs a TrueType font (Debian `fonts-dejavu-core`); without one the
//! charts fail and the report says so, the tables are still written.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Latency;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// Grouped bars: p50, p99, p99.9 and max per system, log-scaled ms.
pub fn latency(path: &Path, title: &str, series: &[(String, Latency)]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let labels = ["p50", "p99", "p99.9", "max"];
    let vals = |l: &Latency| [l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms];
    let top = series
        .iter()
        .flat_map(|(_, l)| vals(l))
        .fold(1.0f64, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..labels.len() as f64, (0.01f64..top).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                labels.get(i).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("publish-to-receive latency (ms, log)")
        .draw()
        .map_err(err)?;
    let n = series.len().max(1) as f64;
    let width = 0.8 / n;
    for (k, (name, l)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let bars = vals(l).into_iter().enumerate().map(move |(i, v)| {
            let x0 = i as f64 + 0.1 + k as f64 * width;
            Rectangle::new(
                [(x0, 0.01), (x0 + width * 0.9, v.max(0.011))],
                color.filled(),
            )
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One bar per system.
pub fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, f64)],
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = series.iter().map(|(_, v)| *v).fold(1.0f64, f64::max) * 1.15;
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..series.len().max(1) as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(series.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(series.iter().enumerate().map(|(i, (_, v))| {
            let color = COLORS[i % COLORS.len()];
            Rectangle::new(
                [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
                color.filled(),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Server RSS over the run, one line per system.
pub fn rss(path: &Path, title: &str, series: &[(String, Vec<(f64, u64)>)]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_t = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let max_m = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|(_, k)| *k as f64 / 1024.0))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_t, 0f64..max_m)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since server start")
        .y_desc("server RSS (MiB)")
        .draw()
        .map_err(err)?;
    for (k, (name, s)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|(t, kib)| (*t, *kib as f64 / 1024.0)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
