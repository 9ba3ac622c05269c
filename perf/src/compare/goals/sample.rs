//! A realistic report of all seven scenarios and six targets, shared by the tests of the compare
//! renderers (goals, report.md, charts, baselines).

use crate::compare::model::*;
use crate::report::LatencySummary;

fn lat(p50: u64, p90: u64, p99: u64, p999: u64, max: u64) -> Option<LatencySummary> {
    Some(LatencySummary {
        p50,
        p90,
        p99,
        p999,
        max,
    })
}

fn target(name: &str, median: Figures, vs_direct: Option<VsDirect>) -> TargetResult {
    let rounds = vec![median.clone(); 3];
    TargetResult {
        target: name.to_owned(),
        rounds,
        median,
        vs_direct,
    }
}

/// Closed-loop or handshake figures of a 10 s run.
fn busy(rate: f64, cpu: f64, latency: Option<LatencySummary>, rss_mb: u64) -> Figures {
    let completed = (rate * 10.0) as u64;
    Figures {
        achieved_rate: rate,
        completed,
        errors: 0,
        latency_us: latency,
        proxy_cpu_s: cpu,
        per_cpu_s: (cpu > 0.0).then(|| completed as f64 / cpu),
        rss_bytes: (rss_mb > 0).then_some(rss_mb << 20),
        ..Figures::default()
    }
}

fn frac(f: f64) -> Option<VsDirect> {
    Some(VsDirect {
        fraction_of_direct: Some(f),
        ..VsDirect::default()
    })
}

fn added(p50: i64, p90: i64, p99: i64) -> Option<VsDirect> {
    let (added_p50_us, added_p90_us, added_p99_us) = (Some(p50), Some(p90), Some(p99));
    Some(VsDirect {
        added_p50_us,
        added_p90_us,
        added_p99_us,
        fraction_of_direct: None,
    })
}

fn at_rate(rate: f64, achieved: f64, l: [u64; 5], cpu: f64) -> Figures {
    let f = busy(achieved, cpu, lat(l[0], l[1], l[2], l[3], l[4]), 0);
    Figures {
        target_rate: Some(rate),
        ..f
    }
}

fn latency(rate: f64, achieved: f64) -> Vec<TargetResult> {
    let cpu = rate / 1000.0;
    vec![
        target(
            "direct",
            at_rate(rate, rate, [80, 120, 250, 900, 2_100], 0.0),
            None,
        ),
        target(
            "meshguard-pair",
            at_rate(rate, achieved, [210, 300, 570, 1_400, 4_000], cpu),
            added(130, 180, 320),
        ),
        target(
            "meshguard-inbound",
            at_rate(rate, achieved, [140, 190, 380, 1_100, 3_000], cpu / 2.0),
            added(60, 70, 130),
        ),
        target(
            "nginx",
            at_rate(rate, rate, [150, 210, 420, 1_300, 9_000], cpu),
            added(70, 90, 170),
        ),
        target(
            "stunnel-pair",
            at_rate(rate, rate, [190, 260, 430, 1_500, 12_000], cpu),
            added(110, 140, 180),
        ),
    ]
}

fn bulk(bytes_per_s: f64, cpu: f64, fraction: Option<f64>, name: &str) -> TargetResult {
    let f = Figures {
        bytes_per_s: Some(bytes_per_s),
        proxy_cpu_s: cpu,
        ..Figures::default()
    };
    target(name, f, fraction.and_then(frac))
}

fn idle(name: &str, idle_mb: u64, per_conn_kb: u64) -> TargetResult {
    let f = Figures {
        idle_rss_bytes: Some(idle_mb << 20),
        rss_bytes: Some((idle_mb << 20) + per_conn_kb * 1024 * 1000),
        memory_per_conn_bytes: Some((per_conn_kb * 1024) as f64),
        idle_connections: Some(1000),
        ..Figures::default()
    };
    target(name, f, None)
}

/// A resilience round: `failed` requests in the faulted run, p99 steady and with the fault.
fn faulted(name: &str, failed: u64, steady_p99: u64, fault_p99: u64) -> TargetResult {
    let figures = Figures {
        latency_us: lat(200, 300, fault_p99, fault_p99 * 2, fault_p99 * 3),
        steady_latency_us: lat(200, 300, steady_p99, steady_p99 * 2, steady_p99 * 3),
        failed_during_fault: Some(failed),
        fault_added_p99_us: Some(fault_p99 as i64 - steady_p99 as i64),
        ..at_rate(1000.0, 1000.0, [200, 300, fault_p99, 0, 0], 0.5)
    };
    target(name, figures, None)
}

fn scenario(
    key: &str,
    title: &str,
    kind: ScenarioKind,
    targets: Vec<TargetResult>,
) -> ScenarioResult {
    let note = format!("What {key} measures.");
    ScenarioResult {
        key: key.to_owned(),
        title: title.to_owned(),
        kind,
        note,
        targets,
    }
}

pub(crate) fn report() -> CompareReport {
    use ScenarioKind::*;
    let l = lat(400, 700, 1_500, 4_000, 9_000);
    let keepalive = vec![
        target("direct", busy(95_000.0, 0.0, l, 0), None),
        target("meshguard-pair", busy(41_000.0, 18.0, l, 24), frac(0.43)),
        target("meshguard-inbound", busy(62_400.0, 12.0, l, 11), frac(0.66)),
        target("nginx", busy(31_000.0, 10.0, l, 8), frac(0.33)),
        target("haproxy", busy(34_000.0, 10.0, l, 30), frac(0.36)),
    ];
    let handshake = vec![
        target("direct", busy(9_000.0, 0.0, l, 0), None),
        target("meshguard-inbound", busy(2_880.0, 9.0, l, 12), frac(0.32)),
        target("nginx", busy(950.0, 10.0, l, 8), frac(0.11)),
        target("haproxy", busy(720.0, 10.0, l, 30), frac(0.08)),
    ];
    let targets = [
        "direct",
        "meshguard-pair",
        "meshguard-inbound",
        "nginx",
        "haproxy",
        "stunnel-pair",
    ]
    .map(|key| TargetInfo {
        key: key.to_owned(),
        description: format!("{key}, TLS 1.3, client cert verified"),
        skipped: None,
    });
    CompareReport {
        meta: Meta {
            started: "2026-11-25T22:00:00Z".to_owned(),
            meshguard_version: "0.1.0".to_owned(),
            build_profile: "release".to_owned(),
            cpus: 2,
            cpu_model: "AMD EPYC 7B13".to_owned(),
            kernel: "6.8.0".to_owned(),
            settings: Settings {
                duration_s: 10.0,
                rounds: 3,
                connections: 32,
                handshake_connections: 8,
                idle_connections: 1000,
                rates: vec![1000.0, 5000.0],
            },
            targets: targets.to_vec(),
            smoke: false,
        },
        scenarios: vec![
            scenario(
                "keepalive",
                "Keep-alive HTTP/1.1 requests, closed loop",
                Throughput,
                keepalive,
            ),
            scenario(
                "handshake",
                "New mTLS connection + one request",
                Handshake,
                handshake,
            ),
            scenario(
                "latency-1000",
                "Latency at 1,000 req/s, open loop",
                LatencyAtRate,
                latency(1000.0, 1000.0),
            ),
            scenario(
                "latency-5000",
                "Latency at 5,000 req/s, open loop",
                LatencyAtRate,
                latency(5000.0, 4990.0),
            ),
            scenario(
                "bulk",
                "One TCP stream, bulk",
                Bulk,
                vec![
                    bulk(3.2e9, 0.0, None, "direct"),
                    bulk(1.9e9, 14.0, Some(0.594), "meshguard-pair"),
                    bulk(1.1e9, 12.0, Some(0.344), "stunnel-pair"),
                ],
            ),
            scenario(
                "idle",
                "Idle mTLS connections",
                Idle,
                vec![
                    idle("meshguard-inbound", 9, 7),
                    idle("nginx", 6, 14),
                    idle("haproxy", 20, 32),
                ],
            ),
            scenario(
                "resilience",
                "One of three replicas killed during an open-loop run at 1000 requests/s",
                Resilience,
                vec![
                    faulted("meshguard-inbound", 0, 600, 1_400),
                    faulted("nginx", 3, 500, 5_500),
                    faulted("haproxy", 0, 450, 2_950),
                ],
            ),
        ],
        goals: Vec::new(),
        regressions: Vec::new(),
        baseline: None,
        regression_threshold: None,
    }
}
