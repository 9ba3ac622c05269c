//! Bar charts: requests per proxy CPU-second (keep-alive and handshake side by side, each with
//! its ANCHORS goal), proxy CPU seconds per scenario, bulk MB/s. One bar per target, grouped by
//! scenario, coloured like the target in every other chart.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Area, Colors, FONT, Ticked, svg};
use crate::compare::model::{CompareReport, Figures, ScenarioKind};
use crate::compare::render::human;

/// Bars of one scenario: its title and one (target, value) per target that has the figure.
pub(super) type Group = (String, Vec<(String, f64)>);

/// Axis ticks are round numbers: `0`, `2.5`, `20`, `60,000`.
fn axis_label(v: f64) -> String {
    if v.abs() >= 100.0 {
        human::int(v)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// One group per scenario of the kinds `keep`, with the targets that have `figure`.
pub(super) fn groups(
    report: &CompareReport,
    keep: impl Fn(ScenarioKind) -> bool,
    figure: impl Fn(&Figures) -> Option<f64>,
) -> Vec<Group> {
    report
        .scenarios
        .iter()
        .filter(|s| keep(s.kind))
        .map(|s| {
            let bars = s
                .targets
                .iter()
                .filter_map(|t| Some((t.target.clone(), figure(&t.median)?)));
            (
                s.key.clone(),
                bars.filter(|(_, v)| v.is_finite()).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, bars)| !bars.is_empty())
        .collect()
}

/// Keep-alive and handshake side by side, each on its own axis with the ANCHORS goal.
pub(super) fn throughput(
    report: &CompareReport,
    colors: &Colors,
) -> anyhow::Result<Option<String>> {
    let panels: Vec<(&str, &str, Vec<Group>, Option<f64>)> = [
        ("keepalive", "Keep-alive mTLS requests", 60_000.0),
        (
            "handshake",
            "New mTLS connections (handshake + 1 request)",
            3_000.0,
        ),
    ]
    .into_iter()
    .map(|(key, caption, goal)| {
        let g = groups(report, |_| true, |f| f.per_cpu_s);
        let g: Vec<Group> = g.into_iter().filter(|g| g.0 == key).collect();
        (caption, "per proxy CPU-second", g, Some(goal))
    })
    .filter(|p| !p.2.is_empty())
    .collect();
    if panels.is_empty() {
        return Ok(None);
    }
    bars(&panels, colors)
}

/// One panel per entry (caption, y axis, groups, goal line), side by side.
pub(super) fn bars(
    panels: &[(&str, &str, Vec<Group>, Option<f64>)],
    colors: &Colors,
) -> anyhow::Result<Option<String>> {
    let panels: Vec<_> = panels.iter().filter(|p| !p.2.is_empty()).collect();
    if panels.is_empty() {
        return Ok(None);
    }
    let width = 560 * panels.len() as u32;
    let svg = svg((width.max(760), 480), |root| {
        let areas = root.split_evenly((1, panels.len()));
        for (area, (caption, y_desc, groups, goal)) in areas.iter().zip(&panels) {
            bar_panel(area, caption, y_desc, groups, *goal, colors)?;
        }
        Ok(())
    })?;
    Ok(Some(svg))
}

fn bar_panel(
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    groups: &[Group],
    goal: Option<f64>,
    colors: &Colors,
) -> anyhow::Result<()> {
    // Each group takes one slot per bar plus half a slot of air on each side.
    let mut centers = Vec::new();
    let mut placed: Vec<(String, f64, f64)> = Vec::new(); // target, left edge, value
    let mut x = 0.0;
    for (name, bars) in groups {
        centers.push((x + (bars.len() as f64 + 1.0) / 2.0, name.clone()));
        for (i, (target, value)) in bars.iter().enumerate() {
            placed.push((target.clone(), x + 0.5 + i as f64, value.max(0.0)));
        }
        x += bars.len() as f64 + 1.0;
    }
    let top = placed.iter().map(|p| p.2).chain(goal).fold(0.0, f64::max);
    // Headroom above the tallest bar (or the goal) for its value label and the legend.
    let top = if top > 0.0 { top * 1.45 } else { 1.0 };
    let x_axis = Ticked::new(0.0..x, centers.iter().map(|c| c.0).collect());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(75)
        .build_cartesian_2d(x_axis, 0.0..top)?;
    let x_label = |v: &f64| {
        let hit = centers.iter().find(|c| (c.0 - v).abs() < 1e-6);
        hit.map(|c| c.1.clone()).unwrap_or_default()
    };
    let y_label = |v: &f64| axis_label(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .y_desc(y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 14))
        .draw()?;
    let mut targets: Vec<&str> = Vec::new();
    for p in &placed {
        if !targets.contains(&p.0.as_str()) {
            targets.push(&p.0);
        }
    }
    let value_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for target in targets {
        let color = colors.of(target);
        let mine: Vec<&(String, f64, f64)> = placed.iter().filter(|p| p.0 == target).collect();
        chart
            .draw_series(
                mine.iter()
                    .map(|p| Rectangle::new([(p.1 + 0.1, 0.0), (p.1 + 0.9, p.2)], color.filled())),
            )?
            .label(target)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart.draw_series(
            mine.iter()
                .map(|p| Text::new(human::rate(p.2), (p.1 + 0.5, p.2), value_style.clone())),
        )?;
    }
    if let Some(goal) = goal {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, goal), (x, goal)],
                8,
                5,
                BLACK.stroke_width(2),
            ))?
            .label(format!("goal ≥ {}", human::int(goal)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}
