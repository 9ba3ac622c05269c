//! The goals of ANCHORS.md next to what this run measured: one [`GoalRow`] per figure the issue
//! must show, with the peers measured here and the figures ANCHORS.md quotes. A verdict is given
//! only where ANCHORS.md states a number to beat and the run can say something about speed (a
//! release build, not a smoke run).

use super::model::{CompareReport, GoalRow, ScenarioResult, TargetResult};
use super::render::human;

/// The meshguard target measured against the single-proxy peers (nginx, haproxy).
const INBOUND: &str = "meshguard-inbound";
/// The meshguard target measured against direct and against the pair peers (stunnel).
const PAIR: &str = "meshguard-pair";

/// Published latency two Istio sidecars add at 1,000 req/s (ANCHORS.md), microseconds.
const ISTIO_ADDED_P90_US: f64 = 230.0;
const ISTIO_ADDED_P99_US: f64 = 300.0;
const LATENCY_REFERENCE: &str =
    "two Istio sidecars +0.23 ms p90 / +0.30 ms p99; two ztunnels +0.17 / +0.20 ms (published)";

/// The ANCHORS.md goals next to this run's figures (fills `CompareReport.goals`).
pub fn goals(report: &CompareReport) -> Vec<GoalRow> {
    let verdicts = report.meta.build_profile != "debug" && !report.meta.smoke;
    let ctx = Ctx { report, verdicts };
    let mut rows = vec![
        ctx.per_cpu_row(
            "handshake",
            "New full mTLS connections (handshake + 1 request) per proxy CPU-second",
            3_000.0,
            "nginx ~950, haproxy ~720 (ANCHORS, this machine size)",
        ),
        ctx.per_cpu_row(
            "keepalive",
            "Keep-alive mTLS requests per proxy CPU-second",
            60_000.0,
            "nginx ~32k, haproxy ~34k (ANCHORS, this machine size)",
        ),
    ];
    rows.extend(ctx.latency_rows(1_000, true));
    rows.extend(ctx.latency_rows(5_000, false));
    rows.push(ctx.bulk_row());
    rows.push(ctx.memory_per_conn_row());
    rows.push(ctx.idle_rss_row());
    rows.push(ctx.resilience_row());
    rows
}

/// Where a figure of one target comes from.
struct Ctx<'a> {
    report: &'a CompareReport,
    /// False for debug builds and smoke runs: their figures say nothing about speed.
    verdicts: bool,
}

impl Ctx<'_> {
    fn scenario(&self, key: &str) -> Option<&ScenarioResult> {
        self.report.scenarios.iter().find(|s| s.key == key)
    }

    fn target(&self, scenario: &str, target: &str) -> Option<&TargetResult> {
        self.scenario(scenario)?
            .targets
            .iter()
            .find(|t| t.target == target)
    }

    /// "nginx 1,020; haproxy 800": the peers of `ours` measured in `scenario`. Peers of a pair
    /// are the other pairs, peers of a single proxy the other single proxies.
    fn peers(
        &self,
        scenario: &str,
        ours: &str,
        figure: impl Fn(&TargetResult) -> Option<String>,
    ) -> String {
        let Some(s) = self.scenario(scenario) else {
            return String::new();
        };
        let pair = ours.ends_with("-pair");
        s.targets
            .iter()
            .filter(|t| t.target != "direct" && !t.target.starts_with("meshguard"))
            .filter(|t| t.target.ends_with("-pair") == pair)
            .filter_map(|t| Some(format!("{} {}", t.target, figure(t)?)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn verdict(&self, value: Option<f64>, met: impl Fn(f64) -> bool) -> Option<bool> {
        value.filter(|_| self.verdicts).map(met)
    }

    fn per_cpu_row(&self, scenario: &str, what: &str, goal: f64, reference: &str) -> GoalRow {
        let value = self
            .target(scenario, INBOUND)
            .and_then(|t| t.median.per_cpu_s);
        GoalRow {
            what: what.to_owned(),
            measured: measured(value.map(human::rate)),
            goal: format!("≥ {}", human::int(goal)),
            peers_here: self.peers(scenario, INBOUND, |t| t.median.per_cpu_s.map(human::rate)),
            reference: reference.to_owned(),
            met: self.verdict(value, |v| v >= goal),
        }
    }

    /// Added p50 (no verdict), p90 (only at 1,000 req/s, where a figure is published) and p99.
    fn latency_rows(&self, rate: u32, published: bool) -> Vec<GoalRow> {
        let scenario = format!("latency-{rate}");
        let pair = self.target(&scenario, PAIR);
        let achieved = pair.map(|t| t.median.achieved_rate);
        let added = |t: &TargetResult, p: u32| {
            let v = t.vs_direct.as_ref()?;
            match p {
                50 => v.added_p50_us,
                90 => v.added_p90_us,
                _ => v.added_p99_us,
            }
        };
        let percentiles: &[u32] = if published { &[50, 90, 99] } else { &[50, 99] };
        percentiles
            .iter()
            .map(|&p| {
                let value = pair.and_then(|t| added(t, p));
                let (goal, limit) = match (published, p) {
                    (true, 90) => (
                        "≤ +0.23 ms (two Istio sidecars, p90)",
                        Some(ISTIO_ADDED_P90_US),
                    ),
                    (true, 99) => (
                        "≤ +0.30 ms (two Istio sidecars, p99)",
                        Some(ISTIO_ADDED_P99_US),
                    ),
                    (true, _) => ("— (no published p50)", None),
                    (false, _) => ("— (no published figure at this rate)", None),
                };
                let met = limit.and_then(|l| self.verdict(value.map(|v| v as f64), |v| v <= l));
                GoalRow {
                    what: format!(
                        "Added p{p} latency at {} req/s, sidecar pair vs direct",
                        human::int(f64::from(rate))
                    ),
                    measured: measured(value.map(|v| {
                        let achieved = achieved.map(human::rate).unwrap_or_default();
                        format!("{} (achieved {achieved} req/s)", human::added_ms(v))
                    })),
                    goal: goal.to_owned(),
                    peers_here: self.peers(&scenario, PAIR, |t| added(t, p).map(human::added_ms)),
                    reference: if published {
                        LATENCY_REFERENCE.to_owned()
                    } else {
                        "none published".to_owned()
                    },
                    met,
                }
            })
            .collect()
    }

    fn bulk_row(&self) -> GoalRow {
        let fraction = |t: &TargetResult| t.vs_direct.as_ref()?.fraction_of_direct;
        let pair = self.target("bulk", PAIR);
        let value = pair.and_then(fraction);
        GoalRow {
            what: "Bulk throughput through a sidecar pair, fraction of direct".to_owned(),
            measured: measured(
                value.map(|f| match pair.and_then(|t| t.median.bytes_per_s) {
                    Some(b) => format!("{} ({})", human::percent(f), human::bytes_per_s(b)),
                    None => human::percent(f),
                }),
            ),
            goal: "— (no figure in ANCHORS)".to_owned(),
            peers_here: self.peers("bulk", PAIR, |t| fraction(t).map(human::percent)),
            reference: "AES-128-GCM ~4.5 GB/s on one core (ANCHORS, this machine size)".to_owned(),
            met: None,
        }
    }

    fn memory_per_conn_row(&self) -> GoalRow {
        let figure = |t: &TargetResult| t.median.memory_per_conn_bytes;
        let value = self.target("idle", INBOUND).and_then(figure);
        let goal = 10.0 * 1024.0;
        GoalRow {
            what: "Memory per idle mTLS connection".to_owned(),
            measured: measured(value.map(human::bytes)),
            goal: "≤ 10 KB".to_owned(),
            peers_here: self.peers("idle", INBOUND, |t| figure(t).map(human::bytes)),
            reference: "nginx 10–19 KB, haproxy 29–40 KB (ANCHORS, this machine size)".to_owned(),
            met: self.verdict(value, |v| v <= goal),
        }
    }

    /// Failed requests while a replica is killed, with the p99 the fault added beside it.
    fn resilience_row(&self) -> GoalRow {
        let figure = |t: &TargetResult| {
            let failed = t.median.failed_during_fault?;
            let added = t.median.fault_added_p99_us.map(human::added_us);
            Some(format!(
                "{} failed, p99 {}",
                human::count(failed),
                added.unwrap_or_else(|| "—".to_owned())
            ))
        };
        let ours = self.target("resilience", INBOUND);
        let failed = ours.and_then(|t| t.median.failed_during_fault);
        GoalRow {
            what: "Requests failed while one of three replicas is killed (open loop)".to_owned(),
            measured: measured(ours.and_then(figure)),
            goal: "0 failed".to_owned(),
            peers_here: self.peers("resilience", INBOUND, figure),
            reference: "linkerd2-proxy: P2C peak-EWMA, retries, consecutive-failure circuit \
                        breaking (ANCHORS; no published figure)"
                .to_owned(),
            met: self.verdict(failed.map(|f| f as f64), |f| f == 0.0),
        }
    }

    fn idle_rss_row(&self) -> GoalRow {
        let figure = |t: &TargetResult| t.median.idle_rss_bytes.map(|b| b as f64);
        let value = self.target("idle", INBOUND).and_then(figure);
        GoalRow {
            what: "Idle RSS of one sidecar".to_owned(),
            measured: measured(value.map(human::bytes)),
            goal: "— (none in ANCHORS)".to_owned(),
            peers_here: self.peers("idle", INBOUND, |t| figure(t).map(human::bytes)),
            reference: "linkerd2-proxy ~18 MB, ztunnel ~12 MB (published)".to_owned(),
            met: None,
        }
    }
}

/// A realistic report of all seven scenarios, shared by the tests of the compare renderers.
#[cfg(test)]
pub(crate) mod sample;

fn measured(value: Option<String>) -> String {
    value.unwrap_or_else(|| "not measured".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [GoalRow], starts: &str) -> &'a GoalRow {
        rows.iter()
            .find(|r| r.what.starts_with(starts))
            .unwrap_or_else(|| panic!("no goal row starting with {starts:?}"))
    }

    #[test]
    fn picks_the_figures_and_verdicts_of_a_release_run() {
        let rows = goals(&sample::report());
        assert_eq!(rows.len(), 11);

        let handshake = row(&rows, "New full mTLS connections");
        assert_eq!(handshake.measured, "3,200");
        assert_eq!(handshake.goal, "≥ 3,000");
        assert_eq!(handshake.peers_here, "nginx 950; haproxy 720");
        assert_eq!(handshake.met, Some(true));

        let keepalive = row(&rows, "Keep-alive");
        assert_eq!(keepalive.measured, "52,000");
        assert_eq!(keepalive.met, Some(false), "52k is below the 60k goal");

        let p50 = row(&rows, "Added p50 latency at 1,000");
        assert!(p50.measured.starts_with("+0.13 ms"), "{}", p50.measured);
        assert_eq!(p50.met, None, "no published p50 to beat");
        assert_eq!(row(&rows, "Added p90 latency at 1,000").met, Some(true));
        let p99 = row(&rows, "Added p99 latency at 1,000");
        assert_eq!(p99.met, Some(false), "+0.32 ms is above +0.30 ms");
        assert_eq!(p99.peers_here, "stunnel-pair +0.18 ms");

        let p99_5k = row(&rows, "Added p99 latency at 5,000");
        assert!(
            p99_5k.measured.contains("achieved 4,990 req/s"),
            "{}",
            p99_5k.measured
        );
        assert_eq!(p99_5k.met, None);

        let bulk = row(&rows, "Bulk");
        assert_eq!(bulk.measured, "59.4 % (1,900 MB/s)");
        assert_eq!(bulk.peers_here, "stunnel-pair 34.4 %");
        assert_eq!(bulk.met, None);

        let memory = row(&rows, "Memory per idle");
        assert_eq!(memory.measured, "7.0 KB");
        assert_eq!(memory.peers_here, "nginx 14.0 KB; haproxy 32.0 KB");
        assert_eq!(memory.met, Some(true));

        let rss = row(&rows, "Idle RSS");
        assert_eq!(rss.measured, "9.0 MB");
        assert_eq!(rss.met, None);

        let resilience = row(&rows, "Requests failed while one of three replicas");
        assert_eq!(resilience.measured, "0 failed, p99 +800 µs");
        assert_eq!(
            resilience.peers_here,
            "nginx 3 failed, p99 +5.00 ms; haproxy 0 failed, p99 +2.50 ms"
        );
        assert_eq!(resilience.met, Some(true));
    }

    #[test]
    fn a_debug_build_gets_figures_but_no_verdict() {
        let mut report = sample::report();
        report.meta.build_profile = "debug".to_owned();
        let rows = goals(&report);
        assert!(rows.iter().all(|r| r.met.is_none()));
        assert_eq!(row(&rows, "New full mTLS connections").measured, "3,200");
    }

    #[test]
    fn missing_figures_read_not_measured() {
        let mut report = sample::report();
        report
            .scenarios
            .retain(|s| s.key != "handshake" && s.key != "idle");
        for s in &mut report.scenarios {
            s.targets.retain(|t| t.target != "meshguard-pair");
        }
        let rows = goals(&report);
        let handshake = row(&rows, "New full mTLS connections");
        assert_eq!(handshake.measured, "not measured");
        assert_eq!(handshake.peers_here, "");
        assert_eq!(handshake.met, None);
        let p99 = row(&rows, "Added p99 latency at 1,000");
        assert_eq!((p99.measured.as_str(), p99.met), ("not measured", None));
        assert_eq!(row(&rows, "Memory per idle").met, None);
    }
}
