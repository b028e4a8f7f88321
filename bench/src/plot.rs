//! PNG charts of a suite. Every system has one colour in every chart
//! ([`color`]); a run that failed keeps its place, drawn in grey and
//! labelled "did not run", never silently left out. Text needs a TrueType
//! font (Debian `fonts-dejavu-core`); without one the charts fail and the
//! report says so, the tables are still written.

use std::path::Path;

use plotters::prelude::*;

use crate::proto::System;
use crate::stats::Latency;

/// The fixed colour of each system.
pub fn color(system: System) -> RGBColor {
    match system {
        System::Chorus => RGBColor(0x1f, 0x77, 0xb4),
        System::Nats => RGBColor(0xff, 0x7f, 0x0e),
        System::Centrifugo => RGBColor(0x2c, 0xa0, 0x2c),
        System::Rabbitmq => RGBColor(0xd6, 0x27, 0x28),
    }
}

/// What a failed run is drawn in.
const FAILED: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

/// One bar: its label, colour and value (`None`: the run did not go
/// through).
pub struct Bar {
    pub label: String,
    pub color: RGBColor,
    pub value: Option<f64>,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// Grouped bars: p50, p99, p99.9 and max per system, log-scaled ms. A
/// system whose run failed has a grey legend entry "did not run".
pub fn latency(
    path: &Path,
    title: &str,
    series: &[(String, RGBColor, Option<Latency>)],
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let labels = ["p50", "p99", "p99.9", "max"];
    let vals = |l: &Latency| [l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms];
    let top = series
        .iter()
        .filter_map(|(_, _, l)| l.as_ref())
        .flat_map(vals)
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
        .y_desc("publish-to-receive latency (ms, log; lower is better)")
        .draw()
        .map_err(err)?;
    let n = series.len().max(1) as f64;
    let width = 0.8 / n;
    for (k, (name, color, l)) in series.iter().enumerate() {
        let color = *color;
        match l {
            Some(l) => {
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
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
            }
            None => {
                // An empty, grey-outlined slot per percentile.
                let bars = (0..labels.len()).map(move |i| {
                    let x0 = i as f64 + 0.1 + k as f64 * width;
                    Rectangle::new([(x0, 0.01), (x0 + width * 0.9, 0.02)], FAILED.filled())
                });
                chart
                    .draw_series(bars)
                    .map_err(err)?
                    .label(format!("{name}: did not run"))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], FAILED.filled())
                    });
            }
        }
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

/// One bar per entry; a failed entry is a grey stub marked "did not run".
pub fn bars(path: &Path, title: &str, y_desc: &str, series: &[Bar]) -> Result<(), String> {
    // Wide enough that every bar's label fits under it.
    let width = (150 * series.len() as u32).max(900);
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = series.iter().filter_map(|b| b.value).fold(1.0f64, f64::max) * 1.15;
    let names: Vec<String> = series
        .iter()
        .map(|b| match b.value {
            Some(_) => b.label.clone(),
            None => format!("{} (did not run)", b.label),
        })
        .collect();
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
        .x_label_style(("sans-serif", 12))
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(series.iter().enumerate().map(|(i, b)| {
            let (v, c) = match b.value {
                Some(v) => (v, b.color),
                None => (top * 0.02, FAILED),
            };
            Rectangle::new([(i as f64 + 0.2, 0.0), (i as f64 + 0.8, v)], c.filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(
            series
                .iter()
                .enumerate()
                .filter(|(_, b)| b.value.is_none())
                .map(|(i, _)| {
                    Text::new(
                        "did not run",
                        (i as f64 + 0.25, top * 0.08),
                        ("sans-serif", 16).into_font(),
                    )
                }),
        )
        .map_err(err)?;
    root.present().map_err(err)
}

/// A figure per run number, one line per system (e.g. fan-out p99 of
/// each of the 5 runs); a failed run is a grey cross on the x axis.
pub fn per_run(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, RGBColor, Vec<Option<f64>>)],
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let runs = series.iter().map(|(_, _, v)| v.len()).max().unwrap_or(1);
    let top = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().flatten().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..runs as f64 + 0.5, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(runs)
        .x_label_formatter(&|x| format!("run {}", x.round() as u64))
        .x_desc("run")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (name, color, vals) in series {
        let color = *color;
        let points: Vec<(f64, f64)> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64 + 1.0, v)))
            .collect();
        let failed = vals.iter().filter(|v| v.is_none()).count();
        let label = if failed > 0 {
            format!("{name} ({failed} run(s) did not run: grey ×)")
        } else {
            name.clone()
        };
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(
                vals.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_none())
                    .map(|(i, _)| {
                        Cross::new((i as f64 + 1.0, top * 0.02), 7, FAILED.stroke_width(3))
                    }),
            )
            .map_err(err)?;
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

/// One system's RSS over a run: label, colour, whether the run went
/// through, and (seconds since start, KiB) samples.
pub type RssLine = (String, RGBColor, bool, Vec<(f64, u64)>);

/// Server RSS over the run, one line per system; a failed run's line is
/// dashed-grey-labelled "(did not run)" but still drawn (its memory is a
/// fact too).
pub fn rss(path: &Path, title: &str, series: &[RssLine]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_t = series
        .iter()
        .flat_map(|(_, _, _, s)| s.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let max_m = series
        .iter()
        .flat_map(|(_, _, _, s)| s.iter().map(|(_, k)| *k as f64 / 1024.0))
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
        .y_desc("server RSS (MiB; lower is better)")
        .draw()
        .map_err(err)?;
    for (name, color, ok, s) in series {
        let color = *color;
        let style = if *ok {
            color.stroke_width(2)
        } else {
            color.mix(0.35).stroke_width(1)
        };
        let label = if *ok {
            name.clone()
        } else {
            format!("{name} (did not run: failed)")
        };
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|(t, kib)| (*t, *kib as f64 / 1024.0)),
                style,
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], style));
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
