//! Latency percentile curves of one fixed-rate scenario: x is the percentile spaced as
//! -log10(1 - p) the way HdrHistogram plots are, y the latency in ms (log scale when the figures
//! span more than two decades), one line per target.

use plotters::prelude::*;

use super::{Colors, FONT, Ticked, svg};
use crate::compare::model::ScenarioResult;
use crate::compare::render::human;

/// Percentiles spaced as -log10(1 - p), the way HdrHistogram plots them; max sits one step past
/// p99.9.
const PERCENTILES: [(f64, &str); 5] = [
    (std::f64::consts::LOG10_2, "p50"),
    (1.0, "p90"),
    (2.0, "p99"),
    (3.0, "p99.9"),
    (4.0, "max"),
];

pub(super) fn latency(
    s: &ScenarioResult,
    title: &str,
    colors: &Colors,
) -> anyhow::Result<Option<String>> {
    let series: Vec<(String, RGBColor, Vec<f64>)> = s
        .targets
        .iter()
        .filter_map(|t| {
            let l = t.median.latency_us.as_ref()?;
            let ms = [l.p50, l.p90, l.p99, l.p999, l.max].map(|us| us as f64 / 1e3);
            let label = format!(
                "{} ({} req/s)",
                t.target,
                human::rate(t.median.achieved_rate)
            );
            Some((label, colors.of(&t.target), ms.to_vec()))
        })
        .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let scale = YScale::fit(series.iter().flat_map(|(_, _, v)| v.iter().copied()));
    let svg = svg((900, 520), |root| {
        let x = Ticked::new(0.0..4.3, PERCENTILES.iter().map(|p| p.0).collect());
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x, Ticked::new(scale.range.clone(), scale.ticks.clone()))?;
        let x_label = |x: &f64| {
            let hit = PERCENTILES.iter().find(|p| (p.0 - x).abs() < 1e-6);
            hit.map(|p| p.1.to_owned()).unwrap_or_default()
        };
        let y_label = |y: &f64| scale.label(*y);
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc(if scale.log {
                "latency, ms (log scale)"
            } else {
                "latency, ms"
            })
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, 14))
            .draw()?;
        for (label, color, ms) in &series {
            let points: Vec<(f64, f64)> = PERCENTILES
                .iter()
                .zip(ms)
                .map(|(p, v)| (p.0, scale.map(*v)))
                .collect();
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        Ok(())
    })?;
    Ok(Some(svg))
}

/// The y axis of a latency chart: linear, or log10 when the values span more than two decades.
/// Values are mapped before plotting so both cases share one coordinate type.
struct YScale {
    log: bool,
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

/// The smallest latency a log axis shows: 1 µs (a zero cannot be placed on it).
const LOG_FLOOR_MS: f64 = 1e-3;

impl YScale {
    fn fit(values: impl Iterator<Item = f64>) -> Self {
        let finite: Vec<f64> = values.filter(|v| v.is_finite() && *v >= 0.0).collect();
        let max = finite.iter().copied().fold(0.0, f64::max);
        let min = finite
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        if max > 0.0 && max / min > 100.0 {
            let lo = min.max(LOG_FLOOR_MS).log10().floor();
            let hi = max.log10().ceil().max(lo + 1.0);
            let ticks = (0..=((hi - lo) as i32))
                .map(|i| lo + f64::from(i))
                .collect();
            return YScale {
                log: true,
                range: lo..hi,
                ticks,
            };
        }
        let step = nice_step(if max > 0.0 { max / 5.0 } else { 0.2 });
        let top = (max / step).ceil().max(1.0) * step;
        let ticks = (0..=((top / step).round() as i32))
            .map(|i| f64::from(i) * step)
            .collect();
        YScale {
            log: false,
            range: 0.0..top * 1.05,
            ticks,
        }
    }

    fn map(&self, ms: f64) -> f64 {
        if self.log {
            ms.max(LOG_FLOOR_MS).log10()
        } else {
            ms
        }
    }

    fn label(&self, y: f64) -> String {
        let ms = if self.log { 10f64.powf(y) } else { y };
        if ms >= 1.0 {
            human::int(ms)
        } else {
            format!("{}", (ms * 1000.0).round() / 1000.0)
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(magnitude * 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_only_when_the_figures_span_more_than_two_decades() {
        let wide = YScale::fit([0.08, 0.3, 2.0, 12.0].into_iter());
        assert!(wide.log);
        assert_eq!(wide.ticks, [-2.0, -1.0, 0.0, 1.0, 2.0]);
        assert_eq!(wide.label(-1.0), "0.1");
        assert_eq!(wide.label(1.0), "10");

        let narrow = YScale::fit([0.08, 0.3, 2.0].into_iter());
        assert!(!narrow.log);
        assert_eq!(narrow.ticks.first(), Some(&0.0));
        assert!(narrow.ticks.last().copied().unwrap_or_default() >= 2.0);

        let zeros = YScale::fit([0.0, 0.0].into_iter());
        assert!(!zeros.log);
        assert!(zeros.range.end > 0.0);
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1_300.0), 2_000.0);
    }
}
