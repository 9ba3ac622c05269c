//! The SVG charts next to `report.md`: latency percentile curves per fixed rate, requests per
//! proxy CPU-second, proxy CPU time and bulk throughput. Each target keeps one colour across every
//! chart. Text is laid out by plotters' naive estimator (no font crate): the SVG names the
//! `sans-serif` family and the viewer renders it.

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;

use super::model::{CompareReport, ScenarioKind};

mod bars;
mod latency;

/// One chart written next to the report.
#[derive(Debug, Clone)]
pub struct ChartFile {
    /// File name inside the report directory, e.g. `latency-1000.svg`.
    pub file_name: String,
    pub title: String,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(90, 90, 90),   // direct: grey
    RGBColor(31, 119, 180), // blue
    RGBColor(44, 160, 44),  // green
    RGBColor(214, 39, 40),  // red
    RGBColor(255, 127, 14), // orange
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Writes the SVG charts into `dir` and returns what it wrote; a chart whose scenario did not run
/// (or has no figure to show) is skipped.
pub fn write_all(report: &CompareReport, dir: &Path) -> anyhow::Result<Vec<ChartFile>> {
    let colors = Colors::new(report);
    let mut charts: Vec<(ChartFile, String)> = Vec::new();
    for s in report
        .scenarios
        .iter()
        .filter(|s| s.kind == ScenarioKind::LatencyAtRate)
    {
        let title = format!("{}: latency by percentile", s.title);
        if let Some(svg) = latency::latency(s, &title, &colors)? {
            charts.push((
                chart_file(&format!("{}.svg", file_stem(&s.key)), &title),
                svg,
            ));
        }
    }
    let title = "Requests per proxy CPU-second (higher is better)";
    if let Some(svg) = bars::throughput(report, &colors)? {
        charts.push((chart_file("throughput.svg", title), svg));
    }
    let title = "Proxy CPU seconds per run (lower is better for the same work)";
    let cpu_groups = bars::groups(
        report,
        |k| k != ScenarioKind::Idle,
        |f| (f.proxy_cpu_s > 0.0).then_some(f.proxy_cpu_s),
    );
    if let Some(svg) = bars::bars(&[(title, "proxy CPU seconds", cpu_groups, None)], &colors)? {
        charts.push((chart_file("cpu.svg", title), svg));
    }
    let title = "Bulk throughput of one TCP stream (MB/s)";
    let bulk = bars::groups(
        report,
        |k| k == ScenarioKind::Bulk,
        |f| f.bytes_per_s.map(|b| b / 1e6),
    );
    if let Some(svg) = bars::bars(&[(title, "MB/s", bulk, None)], &colors)? {
        charts.push((chart_file("bulk.svg", title), svg));
    }
    let mut written = Vec::new();
    for (chart, svg) in charts {
        let path = dir.join(&chart.file_name);
        std::fs::write(&path, svg).with_context(|| {
            format!(
                "Could not write the chart {}: check the directory is writable.",
                path.display()
            )
        })?;
        written.push(chart);
    }
    Ok(written)
}

fn chart_file(file_name: &str, title: &str) -> ChartFile {
    ChartFile {
        file_name: file_name.to_owned(),
        title: title.to_owned(),
    }
}

/// Scenario keys are stable ASCII, but a file name must never escape the report directory.
fn file_stem(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One colour per target, in the order of the report's target list.
struct Colors(Vec<String>);

impl Colors {
    fn new(report: &CompareReport) -> Self {
        let mut keys: Vec<String> = report.meta.targets.iter().map(|t| t.key.clone()).collect();
        for t in report.scenarios.iter().flat_map(|s| &s.targets) {
            if !keys.contains(&t.target) {
                keys.push(t.target.clone());
            }
        }
        Colors(keys)
    }

    fn of(&self, target: &str) -> RGBColor {
        let i = self.0.iter().position(|k| k == target).unwrap_or(0);
        COLORS[i % COLORS.len()]
    }
}

/// Renders one SVG document into a string.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// A linear axis whose tick marks sit exactly at `ticks` (percentile positions, group centres,
/// decades), where plotters would otherwise pick round numbers.
struct Ticked {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Self {
        Ticked { range, ticks }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let at = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.0
        };
        limit.0 + (at * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Bold points carry the labels; no light mesh lines in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::goals::sample;

    fn read(dir: &Path, name: &str) -> String {
        let svg = std::fs::read_to_string(dir.join(name)).expect("chart written");
        assert!(
            svg.starts_with("<svg"),
            "{name} starts with {:?}",
            &svg[..20.min(svg.len())]
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{name} is not closed");
        assert!(svg.contains("<text"), "{name} has no text");
        svg
    }

    /// The target's name as the text of a `<text>` element (a legend entry or a label).
    fn has_text(svg: &str, text: &str) -> bool {
        svg.split("<text").skip(1).any(|t| {
            let body = t.split_once('>').map(|(_, b)| b).unwrap_or_default();
            body.split("</text>")
                .next()
                .unwrap_or_default()
                .contains(text)
        })
    }

    #[test]
    fn writes_every_chart_with_a_legend_naming_each_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let charts = write_all(&sample::report(), dir.path()).expect("charts");
        let names: Vec<&str> = charts.iter().map(|c| c.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency-1000.svg",
                "latency-5000.svg",
                "throughput.svg",
                "cpu.svg",
                "bulk.svg"
            ]
        );
        let expect: [(&str, &[&str]); 5] = [
            (
                "latency-1000.svg",
                &[
                    "direct",
                    "meshguard-pair",
                    "meshguard-inbound",
                    "nginx",
                    "stunnel-pair",
                ],
            ),
            ("latency-5000.svg", &["p50", "p99.9", "max", "4,990 req/s"]),
            (
                "throughput.svg",
                &[
                    "meshguard-pair",
                    "meshguard-inbound",
                    "nginx",
                    "haproxy",
                    "goal ≥ 60,000",
                    "goal ≥ 3,000",
                ],
            ),
            (
                "cpu.svg",
                &[
                    "meshguard-pair",
                    "meshguard-inbound",
                    "nginx",
                    "haproxy",
                    "stunnel-pair",
                    "latency-1000",
                ],
            ),
            (
                "bulk.svg",
                &["direct", "meshguard-pair", "stunnel-pair", "1,900"],
            ),
        ];
        for (name, texts) in expect {
            let svg = read(dir.path(), name);
            for text in texts {
                assert!(has_text(&svg, text), "{name} shows no {text:?}");
            }
        }
        assert!(
            !has_text(&read(dir.path(), "throughput.svg"), "direct"),
            "direct has no proxy CPU"
        );
    }

    #[test]
    fn an_empty_report_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut report = sample::report();
        report.scenarios.clear();
        assert!(write_all(&report, dir.path()).expect("charts").is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

        // Scenarios that ran without any target.
        let mut report = sample::report();
        report.scenarios.iter_mut().for_each(|s| s.targets.clear());
        assert!(write_all(&report, dir.path()).expect("charts").is_empty());
    }

    #[test]
    fn zeros_and_missing_figures_do_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut report = sample::report();
        for t in report.scenarios.iter_mut().flat_map(|s| &mut s.targets) {
            let zero = crate::report::LatencySummary {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
            t.median.latency_us = t.median.latency_us.map(|_| zero);
            t.median.achieved_rate = 0.0;
            t.median.per_cpu_s = t.median.per_cpu_s.map(|_| 0.0);
            t.median.bytes_per_s = t.median.bytes_per_s.map(|_| f64::NAN);
        }
        let charts = write_all(&report, dir.path()).expect("charts");
        for c in &charts {
            read(dir.path(), &c.file_name);
        }
        assert!(charts.iter().any(|c| c.file_name == "latency-1000.svg"));
    }
}
