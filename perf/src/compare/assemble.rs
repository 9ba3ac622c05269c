//! From the rounds of one scenario to its result: the median of each figure over the rounds
//! (errors summed, since one failed request in any round matters), and each target against
//! direct measured in the same rounds.

use super::model::{Figures, ScenarioKind, ScenarioResult, TargetResult, VsDirect};
use super::scenarios::Scenario;
use crate::report::LatencySummary;

/// Medians over rounds and each target against direct.
pub(super) fn assemble(
    scenario: &Scenario,
    rounds: Vec<(&'static str, Vec<Figures>)>,
) -> ScenarioResult {
    let mut targets: Vec<TargetResult> = rounds
        .into_iter()
        .map(|(key, list)| TargetResult {
            target: key.to_owned(),
            median: median_figures(&list),
            rounds: list,
            vs_direct: None,
        })
        .collect();
    let direct = targets
        .iter()
        .find(|t| t.target == "direct")
        .map(|t| t.median.clone());
    if let Some(direct) = direct {
        for t in targets.iter_mut().filter(|t| t.target != "direct") {
            t.vs_direct = Some(vs_direct(scenario.kind, &t.median, &direct));
        }
    }
    ScenarioResult {
        key: scenario.key.clone(),
        title: scenario.title.clone(),
        kind: scenario.kind,
        note: scenario.note.clone(),
        targets,
    }
}

fn vs_direct(kind: ScenarioKind, t: &Figures, direct: &Figures) -> VsDirect {
    let added =
        |f: fn(&crate::report::LatencySummary) -> u64| match (&t.latency_us, &direct.latency_us) {
            (Some(a), Some(b)) => Some(f(a) as i64 - f(b) as i64),
            _ => None,
        };
    let fraction = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    match kind {
        ScenarioKind::LatencyAtRate => VsDirect {
            added_p50_us: added(|l| l.p50),
            added_p90_us: added(|l| l.p90),
            added_p99_us: added(|l| l.p99),
            fraction_of_direct: None,
        },
        ScenarioKind::Throughput | ScenarioKind::Handshake => VsDirect {
            fraction_of_direct: fraction(t.achieved_rate, direct.achieved_rate),
            ..VsDirect::default()
        },
        ScenarioKind::Bulk => VsDirect {
            fraction_of_direct: fraction(
                t.bytes_per_s.unwrap_or(0.0),
                direct.bytes_per_s.unwrap_or(0.0),
            ),
            ..VsDirect::default()
        },
        // Direct has one replica and nothing to fail over; the fault run is compared with the
        // same target's steady run instead (`fault_added_p99_us`).
        ScenarioKind::Idle | ScenarioKind::Resilience => VsDirect::default(),
    }
}

/// The median of every figure over the rounds; the errors of all rounds together.
fn median_figures(rounds: &[Figures]) -> Figures {
    let f64s = |get: fn(&Figures) -> Option<f64>| median(rounds.iter().filter_map(get).collect());
    let u64s = |get: fn(&Figures) -> Option<u64>| {
        median(rounds.iter().filter_map(get).map(|v| v as f64).collect()).map(|v| v.round() as u64)
    };
    Figures {
        achieved_rate: f64s(|f| Some(f.achieved_rate)).unwrap_or(0.0),
        target_rate: rounds.first().and_then(|f| f.target_rate),
        completed: u64s(|f| Some(f.completed)).unwrap_or(0),
        errors: rounds.iter().map(|f| f.errors).sum(),
        latency_us: median_latency(rounds, |f| f.latency_us),
        proxy_cpu_s: f64s(|f| Some(f.proxy_cpu_s)).unwrap_or(0.0),
        per_cpu_s: f64s(|f| f.per_cpu_s),
        rss_bytes: u64s(|f| f.rss_bytes),
        bytes_per_s: f64s(|f| f.bytes_per_s),
        idle_rss_bytes: u64s(|f| f.idle_rss_bytes),
        memory_per_conn_bytes: f64s(|f| f.memory_per_conn_bytes),
        idle_connections: u64s(|f| f.idle_connections),
        steady_latency_us: median_latency(rounds, |f| f.steady_latency_us),
        // Failures matter in any round, like errors: summed.
        failed_during_fault: rounds
            .iter()
            .any(|f| f.failed_during_fault.is_some())
            .then(|| rounds.iter().filter_map(|f| f.failed_during_fault).sum()),
        fault_added_p99_us: median(
            rounds
                .iter()
                .filter_map(|f| f.fault_added_p99_us)
                .map(|v| v as f64)
                .collect(),
        )
        .map(|v| v.round() as i64),
    }
}

/// Each percentile's median over the rounds that have `get`; `None` when none has.
fn median_latency(
    rounds: &[Figures],
    get: fn(&Figures) -> Option<LatencySummary>,
) -> Option<LatencySummary> {
    let summaries: Vec<LatencySummary> = rounds.iter().filter_map(get).collect();
    if summaries.is_empty() {
        return None;
    }
    let each = |pick: fn(&LatencySummary) -> u64| {
        let values = summaries.iter().map(|l| pick(l) as f64).collect();
        median(values).map_or(0, |v| v.round() as u64)
    };
    Some(LatencySummary {
        p50: each(|l| l.p50),
        p90: each(|l| l.p90),
        p99: each(|l| l.p99),
        p999: each(|l| l.p999),
        max: each(|l| l.max),
    })
}

/// The middle value (the mean of the two middle ones for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn medians_per_figure_and_errors_summed() {
        let round = |rate: f64, p99: u64, errors: u64| Figures {
            achieved_rate: rate,
            errors,
            latency_us: Some(LatencySummary {
                p50: 1,
                p90: 2,
                p99,
                p999: 4,
                max: 5,
            }),
            per_cpu_s: Some(rate / 2.0),
            ..Figures::default()
        };
        let m = median_figures(&[round(100.0, 9, 1), round(300.0, 7, 0), round(200.0, 8, 2)]);
        assert_eq!(m.achieved_rate, 200.0);
        assert_eq!(m.per_cpu_s, Some(100.0));
        assert_eq!(m.latency_us.map(|l| l.p99), Some(8));
        assert_eq!(m.errors, 3);
        assert_eq!(m.bytes_per_s, None);
    }

    #[test]
    fn added_latency_and_fraction_are_against_direct() {
        let with = |p50: u64, p99: u64, rate: f64| Figures {
            achieved_rate: rate,
            latency_us: Some(LatencySummary {
                p50,
                p90: p50,
                p99,
                p999: p99,
                max: p99,
            }),
            ..Figures::default()
        };
        let v = vs_direct(
            ScenarioKind::LatencyAtRate,
            &with(300, 900, 1.0),
            &with(100, 1000, 1.0),
        );
        assert_eq!((v.added_p50_us, v.added_p99_us), (Some(200), Some(-100)));
        let v = vs_direct(
            ScenarioKind::Throughput,
            &with(0, 0, 50.0),
            &with(0, 0, 200.0),
        );
        assert_eq!(v.fraction_of_direct, Some(0.25));
        let v = vs_direct(
            ScenarioKind::Throughput,
            &with(0, 0, 50.0),
            &with(0, 0, 0.0),
        );
        assert_eq!(v.fraction_of_direct, None);
    }
}
