//! `report.md`: the run's figures for people. The goals table comes first (it is what a reader
//! looks for), then one table per scenario, then regressions against the baseline. Numbers are
//! formatted by [`human`]; the JSON keeps the raw values.

pub(crate) mod human;

use std::fmt::Write as _;

use super::charts::ChartFile;
use super::model::{CompareReport, Figures, ScenarioKind, ScenarioResult, TargetResult};

/// The whole report.md: meta, goals, one section per scenario with its charts, regressions.
pub fn markdown(report: &CompareReport, charts: &[ChartFile]) -> String {
    let mut out = String::new();
    meta(&mut out, report);
    goals(&mut out, report);
    let mut shown = Vec::new();
    for scenario in &report.scenarios {
        section(&mut out, report, scenario);
        let own = format!("{}.svg", scenario.key);
        for chart in charts.iter().filter(|c| c.file_name == own) {
            image(&mut out, chart);
            shown.push(chart.file_name.as_str());
        }
    }
    let rest: Vec<&ChartFile> = charts
        .iter()
        .filter(|c| !shown.contains(&c.file_name.as_str()))
        .collect();
    if !rest.is_empty() {
        out.push_str("## Charts\n\n");
        for chart in rest {
            image(&mut out, chart);
        }
    }
    regressions(&mut out, report);
    out.push_str(
        "---\nMemory: 1 KB = 1,024 bytes, 1 MB = 1,048,576 bytes. Throughput: 1 MB/s = 10⁶ bytes \
         per second. Latency is measured from each request's intended send time (open loop) into \
         an HdrHistogram. CPU is user + system time of the target's proxy processes from /proc.\n",
    );
    out
}

fn meta(out: &mut String, report: &CompareReport) {
    let m = &report.meta;
    let s = &m.settings;
    out.push_str("# meshguard perf compare\n\n");
    if m.build_profile == "debug" {
        out.push_str(
            "> ⚠️ **DEBUG BUILD: these figures show the harness works, not meshguard's speed.** \
             Run `cargo build --release` and compare again before reading any number below. \
             Goal verdicts are withheld.\n\n",
        );
    }
    if m.smoke {
        out.push_str(
            "> ⚠️ **Smoke run**: short runs that only check each scenario completes; the figures \
             are not measurements and goal verdicts are withheld.\n\n",
        );
    }
    let rates: Vec<String> = s.rates.iter().map(|r| human::int(*r)).collect();
    let rows = [
        ("Started", m.started.clone()),
        (
            "meshguard",
            format!("{} ({} build)", m.meshguard_version, m.build_profile),
        ),
        ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
        ("Kernel", m.kernel.clone()),
        (
            "Runs",
            format!(
                "{} s each, {} interleaved rounds (A B A B …); every figure is the median of {} rounds, \
             errors the sum",
                trim(s.duration_s),
                s.rounds,
                s.rounds
            ),
        ),
        (
            "Connections",
            format!(
                "{} (keep-alive and latency), {} (handshake), {} idle (memory)",
                s.connections,
                s.handshake_connections,
                human::count(u64::from(s.idle_connections))
            ),
        ),
        ("Fixed rates", format!("{} req/s", rates.join(", "))),
    ];
    out.push_str("| | |\n|---|---|\n");
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {} |", cell(&v));
    }
    out.push_str("\n## Targets\n\n| target | what | ran |\n|---|---|---|\n");
    for t in &m.targets {
        let ran = match &t.skipped {
            None => "✔".to_owned(),
            Some(why) => format!("skipped: {why}"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            t.key,
            cell(&t.description),
            cell(&ran)
        );
    }
    out.push('\n');
}

fn goals(out: &mut String, report: &CompareReport) {
    out.push_str("## Goals (ANCHORS.md)\n\n");
    if report.goals.is_empty() {
        out.push_str("No goals were evaluated.\n\n");
        return;
    }
    out.push_str(
        "| what | meshguard here | goal | peers here | reference | verdict |\n\
         |---|---|---|---|---|---|\n",
    );
    for g in &report.goals {
        let verdict = match g.met {
            Some(true) => "✔",
            Some(false) => "✘",
            None => "—",
        };
        let peers = if g.peers_here.is_empty() {
            "—"
        } else {
            &g.peers_here
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {verdict} |",
            cell(&g.what),
            cell(&g.measured),
            cell(&g.goal),
            cell(peers),
            cell(&g.reference)
        );
    }
    out.push_str(
        "\nPer proxy CPU-second: operations completed divided by the CPU time of the target's \
         proxy processes, so a figure does not depend on how many cores the load generator \
         took from the proxy.\n\n",
    );
}

fn section(out: &mut String, report: &CompareReport, s: &ScenarioResult) {
    let _ = writeln!(out, "## {}\n", s.title);
    if !s.note.is_empty() {
        let _ = writeln!(out, "{}\n", s.note);
    }
    let rounds = report.meta.settings.rounds;
    let _ = writeln!(
        out,
        "Median of {rounds} rounds; errors summed over the rounds.\n"
    );
    if s.targets.is_empty() {
        out.push_str("No target ran in this scenario.\n\n");
        return;
    }
    let header = columns(s.kind, report);
    let _ = writeln!(out, "| target | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(header.len()));
    for t in &s.targets {
        let cells = row(s.kind, t, report.meta.settings.duration_s);
        let _ = writeln!(out, "| {} | {} |", t.target, cells.join(" | "));
    }
    out.push('\n');
    if let Some(line) = peer_ratios(s) {
        let _ = writeln!(out, "{line}\n");
    }
}

fn columns(kind: ScenarioKind, report: &CompareReport) -> Vec<String> {
    let names: &[&str] = match kind {
        ScenarioKind::Throughput => &[
            "req/s",
            "per proxy CPU-s",
            "proxy CPU",
            "p50",
            "p99",
            "RSS",
            "× direct",
            "errors",
        ],
        ScenarioKind::Handshake => &[
            "conn/s",
            "per proxy CPU-s",
            "proxy CPU",
            "p50",
            "p99",
            "errors",
        ],
        ScenarioKind::LatencyAtRate => &[
            "rate target / achieved",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "added p50",
            "added p90",
            "added p99",
            "errors",
        ],
        ScenarioKind::Bulk => &[
            "MB/s",
            "of direct",
            "proxy CPU",
            "MB per proxy CPU-s",
            "errors",
        ],
        ScenarioKind::Idle => &["idle RSS", "RSS with conns", "per connection", "errors"],
        ScenarioKind::Resilience => &[
            "rate target / achieved",
            "failed during the fault",
            "p99 steady",
            "p99 with the fault",
            "added p99",
            "max with the fault",
            "proxy CPU",
            "errors (steady run)",
        ],
    };
    let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    if kind == ScenarioKind::Idle {
        let n = human::count(u64::from(report.meta.settings.idle_connections));
        names[1] = format!("RSS with {n} conns");
    }
    names
}

fn row(kind: ScenarioKind, t: &TargetResult, duration_s: f64) -> Vec<String> {
    let m = &t.median;
    let dash = || "—".to_owned();
    let opt = |v: Option<String>| v.unwrap_or_else(dash);
    let cpu = if m.per_cpu_s.is_some() || m.proxy_cpu_s > 0.0 {
        human::seconds(m.proxy_cpu_s)
    } else {
        dash()
    };
    let per_cpu = opt(m.per_cpu_s.map(human::rate));
    let lat = |f: fn(&crate::report::LatencySummary) -> u64| {
        opt(m
            .latency_us
            .as_ref()
            .map(|l| human::latency_us(f(l) as f64)))
    };
    let vs = t.vs_direct.as_ref();
    let added =
        |f: fn(&super::model::VsDirect) -> Option<i64>| opt(vs.and_then(f).map(human::added_us));
    let fraction = vs.and_then(|v| v.fraction_of_direct);
    let errors = human::count(m.errors);
    match kind {
        ScenarioKind::Throughput => vec![
            human::rate(m.achieved_rate),
            per_cpu,
            cpu,
            lat(|l| l.p50),
            lat(|l| l.p99),
            opt(m.rss_bytes.map(|b| human::bytes(b as f64))),
            opt(fraction.map(human::times)),
            errors,
        ],
        ScenarioKind::Handshake => vec![
            human::rate(m.achieved_rate),
            per_cpu,
            cpu,
            lat(|l| l.p50),
            lat(|l| l.p99),
            errors,
        ],
        ScenarioKind::LatencyAtRate => vec![
            format!(
                "{} / {}",
                opt(m.target_rate.map(human::rate)),
                human::rate(m.achieved_rate)
            ),
            lat(|l| l.p50),
            lat(|l| l.p90),
            lat(|l| l.p99),
            lat(|l| l.p999),
            lat(|l| l.max),
            added(|v| v.added_p50_us),
            added(|v| v.added_p90_us),
            added(|v| v.added_p99_us),
            errors,
        ],
        ScenarioKind::Bulk => vec![
            opt(m.bytes_per_s.map(human::bytes_per_s)),
            opt(fraction.map(human::percent)),
            cpu,
            opt(bulk_mb_per_cpu_s(t, duration_s).map(human::rate)),
            errors,
        ],
        ScenarioKind::Idle => vec![
            opt(m.idle_rss_bytes.map(|b| human::bytes(b as f64))),
            opt(m.rss_bytes.map(|b| {
                let open = m
                    .idle_connections
                    .map(|n| format!(" ({} open)", human::count(n)));
                format!("{}{}", human::bytes(b as f64), open.unwrap_or_default())
            })),
            opt(m.memory_per_conn_bytes.map(human::bytes)),
            errors,
        ],
        ScenarioKind::Resilience => vec![
            format!(
                "{} / {}",
                opt(m.target_rate.map(human::rate)),
                human::rate(m.achieved_rate)
            ),
            opt(m.failed_during_fault.map(human::count)),
            opt(m.steady_latency_us.map(|l| human::latency_us(l.p99 as f64))),
            lat(|l| l.p99),
            opt(m.fault_added_p99_us.map(human::added_us)),
            lat(|l| l.max),
            cpu,
            errors,
        ],
    }
}

/// Megabytes (10⁶) moved per proxy CPU-second: the median over rounds of each round's bytes
/// (rate × run length) divided by its proxy CPU time. `None` for direct (no proxy).
pub(crate) fn bulk_mb_per_cpu_s(t: &TargetResult, duration_s: f64) -> Option<f64> {
    let one = |f: &Figures| {
        let bytes = f.bytes_per_s? * duration_s;
        (f.proxy_cpu_s > 0.0).then(|| bytes / 1e6 / f.proxy_cpu_s)
    };
    let mut per_round: Vec<f64> = t.rounds.iter().filter_map(one).collect();
    if per_round.is_empty() {
        return one(&t.median);
    }
    per_round.sort_by(f64::total_cmp);
    let n = per_round.len();
    Some(if n % 2 == 1 {
        per_round[n / 2]
    } else {
        (per_round[n / 2 - 1] + per_round[n / 2]) / 2.0
    })
}

/// "Per proxy CPU-second, meshguard-inbound does 3.37× nginx's work, 3.06× haproxy's."
fn peer_ratios(s: &ScenarioResult) -> Option<String> {
    if !matches!(s.kind, ScenarioKind::Throughput | ScenarioKind::Handshake) {
        return None;
    }
    let ours = s.targets.iter().find(|t| t.target == "meshguard-inbound")?;
    let ours = ours.median.per_cpu_s.filter(|v| *v > 0.0)?;
    let ratios: Vec<String> = s
        .targets
        .iter()
        .filter(|t| t.target != "direct" && !t.target.starts_with("meshguard"))
        .filter_map(|t| {
            let theirs = t.median.per_cpu_s.filter(|v| *v > 0.0)?;
            Some(format!("{} {}'s", human::times(ours / theirs), t.target))
        })
        .collect();
    (!ratios.is_empty()).then(|| {
        format!(
            "Per proxy CPU-second, meshguard-inbound does {} work.",
            ratios.join(", ")
        )
    })
}

fn regressions(out: &mut String, report: &CompareReport) {
    out.push_str("## Regressions\n\n");
    let Some(baseline) = &report.baseline else {
        out.push_str(
            "No baseline given (`--baseline FILE` compares against an earlier report.json).\n\n",
        );
        return;
    };
    let _ = writeln!(
        out,
        "Against `{baseline}`, machine-relative figures only (per CPU-second, fraction of direct, added latency, memory per connection).\n"
    );
    if report.regressions.is_empty() {
        match report.regression_threshold {
            Some(t) => {
                let _ = writeln!(out, "None beyond {}.\n", human::percent(t));
            }
            None => out.push_str("None beyond the threshold.\n\n"),
        }
        return;
    }
    out.push_str("| scenario | target | figure | baseline | now | worse by |\n|---|---|---|---:|---:|---:|\n");
    for r in &report.regressions {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.figure,
            human::figure(&r.figure, r.baseline),
            human::figure(&r.figure, r.now),
            human::percent(r.worse_by)
        );
    }
    out.push('\n');
}

fn image(out: &mut String, chart: &ChartFile) {
    let _ = writeln!(out, "![{}]({})\n", cell(&chart.title), chart.file_name);
}

/// A Markdown table cell: pipes escaped, newlines folded.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `10` rather than `10.0`, `0.5` as is.
fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests;
