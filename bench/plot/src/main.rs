//! `bench-plot RESULTS_DIR OUT_DIR`: renders the benchmark suite's results (the `*.jsonl` files
//! that bench/*.sh write) as SVG charts, for docs/benchmarks.md and design reviews.
//!
//! Every chart shows medians over the rounds of one run, as the tables do. A results file that is
//! missing is skipped (each bench script can be run alone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Series colours, in order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
];

/// A chart of bars: one group per category on the x axis, one bar per series in each group.
struct Bars<'a> {
    title: &'a str,
    y_label: &'a str,
    groups: Vec<String>,
    series: Vec<(String, Vec<f64>)>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, results, out] = args.as_slice() else {
        bail!("usage: bench-plot RESULTS_DIR OUT_DIR   (e.g. bench/results docs/bench)")
    };
    let (results, out) = (Path::new(results), PathBuf::from(out));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let throughput = [
        (
            "mesh",
            "Mesh channel vs a direct channel vs an haproxy hop (health check)",
            &[
                "direct",
                "direct-2conn",
                "mesh",
                "mesh-1server",
                "haproxy",
                "haproxy-exemesh",
            ][..],
        ),
        (
            "python",
            "Wrapped Python (worker mode) vs the same handler in grpcio",
            &["grpcio-sync", "grpcio-aio", "worker"][..],
        ),
        (
            "tracing",
            "Tracing off vs every call traced vs 10 % sampled",
            &["off", "on100", "on10"][..],
        ),
        (
            "tls",
            "Plaintext vs mTLS (health check)",
            &["plaintext", "mtls"][..],
        ),
        (
            "busy_poll",
            "Busy polling off vs on (health check)",
            &[
                "mesh-off",
                "mesh",
                "direct-off",
                "direct",
                "haproxy-off",
                "haproxy",
            ][..],
        ),
    ];
    for (name, title, variants) in throughput {
        let Some(runs) = read(&results.join(format!("{name}.jsonl")))? else {
            continue;
        };
        let chart = by_concurrency(&runs, title, variants);
        if chart.series.is_empty() {
            continue;
        }
        written.push(draw_bars(&out.join(format!("{name}.svg")), &chart)?);
    }
    if let Some(runs) = read(&results.join("latency.jsonl"))? {
        written.push(draw_bars(&out.join("latency.svg"), &latency(&runs))?);
    }
    if let Some(runs) = read(&results.join("failover.jsonl"))?
        && let Some(run) = runs.iter().find(|r| r.get("timeline").is_some())
    {
        written.push(draw_failover(&out.join("failover.svg"), run)?);
    }
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The records of a results file, or `None` when there is none.
fn read(path: &Path) -> anyhow::Result<Option<Vec<Value>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON record", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<Value>>>()
        .map(Some)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Median calls/s by concurrency (the groups) and variant (the series).
fn by_concurrency<'a>(runs: &[Value], title: &'a str, variants: &[&str]) -> Bars<'a> {
    let mut rps: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    for r in runs {
        let (Some(c), Some(v), Some(x)) = (
            r["concurrency"].as_u64(),
            r["variant"].as_str(),
            r["rps"].as_f64(),
        ) else {
            continue;
        };
        if let Some(variant) = variants.iter().find(|w| **w == v) {
            rps.entry((c, variant)).or_default().push(x);
        }
    }
    let mut concurrencies: Vec<u64> = rps.keys().map(|(c, _)| *c).collect();
    concurrencies.dedup();
    let series = variants
        .iter()
        .filter(|v| rps.keys().any(|(_, w)| w == *v))
        .map(|v| {
            let values = concurrencies
                .iter()
                .map(|c| {
                    rps.get(&(*c, v))
                        .and_then(|x| median(x.clone()))
                        .unwrap_or(0.0)
                })
                .collect();
            (v.to_string(), values)
        })
        .collect();
    Bars {
        title,
        y_label: "calls/s (median)",
        groups: concurrencies
            .iter()
            .map(|c| format!("{c} in flight"))
            .collect(),
        series,
    }
}

/// Median p50 and p99 by variant, at a fixed rate.
fn latency(runs: &[Value]) -> Bars<'static> {
    let variants = ["native", "worker", "mesh"];
    let pick = |v: &str, p: &str| {
        median(
            runs.iter()
                .filter(|r| r["variant"] == v)
                .filter_map(|r| r["latency_us"][p].as_f64())
                .map(|us| us / 1000.0)
                .collect(),
        )
        .unwrap_or(0.0)
    };
    Bars {
        title: "Latency at a fixed 1,000 calls/s: native Rust vs wrapped worker vs the full mesh hop",
        y_label: "milliseconds (median of rounds)",
        groups: variants.iter().map(ToString::to_string).collect(),
        series: ["p50", "p99"]
            .iter()
            .map(|p| (p.to_string(), variants.iter().map(|v| pick(v, p)).collect()))
            .collect(),
    }
}

fn draw_bars(path: &Path, chart: &Bars) -> anyhow::Result<PathBuf> {
    let top = chart
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let groups = chart.groups.len();
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut plot = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..groups as f64 - 0.5, 0f64..top)?;
    let names = chart.groups.clone();
    plot.configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.max(2))
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(chart.y_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let width = 0.8 / chart.series.len().max(1) as f64;
    for (s, (name, values)) in chart.series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        plot.draw_series(values.iter().enumerate().map(|(g, v)| {
            let left = g as f64 - 0.4 + s as f64 * width;
            Rectangle::new([(left, 0.0), (left + width * 0.92, *v)], colour.filled())
        }))?
        .label(name.clone())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(path.to_path_buf())
}

/// Calls/s and p99 per slice of one failover run, with the kill marked.
fn draw_failover(path: &Path, run: &Value) -> anyhow::Result<PathBuf> {
    let slices = run["timeline"].as_array().context("a timeline")?;
    let points = |field: &str, scale: f64| -> Vec<(f64, f64)> {
        slices
            .iter()
            .filter_map(|s| Some((s["start_ms"].as_f64()? / 1000.0, s[field].as_f64()? * scale)))
            .collect()
    };
    let p99 = points("p99_us", 1e-3);
    let rps = points("rps", 1.0);
    let killed = run["killed_at_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let end = p99.last().map_or(1.0, |(t, _)| t + 0.1);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    root.titled(
        "kill -9 of 1 of 3 replicas at 16 in flight (100 ms slices; the red line is the kill)",
        ("sans-serif", 20),
    )?;
    let (upper, lower) = root.margin(36, 8, 8, 8).split_vertically(260);
    for (area, values, label, colour) in [
        (&upper, &rps, "calls/s", COLOURS[0]),
        (&lower, &p99, "p99 ms", COLOURS[3]),
    ] {
        let top = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..end, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the measured run")
            .y_desc(label)
            .draw()?;
        chart.draw_series(LineSeries::new(
            values.iter().copied(),
            colour.stroke_width(2),
        ))?;
        chart.draw_series(LineSeries::new(
            [(killed, 0.0), (killed, top)],
            RED.mix(0.6).stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_by_concurrency_and_variant_in_the_order_asked() {
        let runs: Vec<Value> = [
            (1, "mesh", 10.0),
            (1, "direct", 20.0),
            (1, "direct", 40.0),
            (16, "direct", 90.0),
            (16, "mesh", 70.0),
            (16, "other", 1.0),
        ]
        .iter()
        .map(|(c, v, rps)| serde_json::json!({"concurrency": c, "variant": v, "rps": rps}))
        .collect();
        let bars = by_concurrency(&runs, "t", &["direct", "mesh", "haproxy"]);
        assert_eq!(bars.groups, ["1 in flight", "16 in flight"]);
        let names: Vec<&str> = bars.series.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["direct", "mesh"], "no haproxy runs, no bars for it");
        assert_eq!(bars.series[0].1, [30.0, 90.0]);
        assert_eq!(bars.series[1].1, [10.0, 70.0]);
    }

    #[test]
    fn charts_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bars = Bars {
            title: "t",
            y_label: "calls/s",
            groups: vec!["1 in flight".into()],
            series: vec![("direct".into(), vec![5.0])],
        };
        let path = draw_bars(&dir.join("x.svg"), &bars).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.starts_with("<svg") && svg.contains("1 in flight") && svg.contains("direct"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
