use super::*;
use crate::compare::goals::{goals as goal_rows, sample};
use crate::compare::model::Regression;

fn charts() -> Vec<ChartFile> {
    ["latency-1000.svg", "throughput.svg"]
        .map(|f| ChartFile {
            file_name: f.to_owned(),
            title: format!("chart {f}"),
        })
        .to_vec()
}

fn report() -> CompareReport {
    let mut report = sample::report();
    report.goals = goal_rows(&report);
    report
}

/// The table row of `target` in the section titled `title`.
fn row<'a>(md: &'a str, title: &str, target: &str) -> &'a str {
    let section = md
        .split(&format!("## {title}\n"))
        .nth(1)
        .expect("section present");
    let section = section.split("\n## ").next().unwrap_or_default();
    let prefix = format!("| {target} |");
    section
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {target} row in {title}"))
}

#[test]
fn every_scenario_and_target_has_its_table_row() {
    let report = report();
    let md = markdown(&report, &charts());
    assert!(md.starts_with("# meshguard perf compare\n"));
    assert!(!md.contains("DEBUG BUILD"));
    for s in &report.scenarios {
        assert!(
            md.contains(&format!("## {}\n\n{}\n", s.title, s.note)),
            "{}",
            s.title
        );
        for t in &s.targets {
            row(&md, &s.title, &t.target);
        }
    }
    assert!(md.contains("Median of 3 rounds"));
    let keepalive = row(
        &md,
        "Keep-alive HTTP/1.1 requests, closed loop",
        "meshguard-inbound",
    );
    assert_eq!(
        keepalive,
        "| meshguard-inbound | 62,400 | 52,000 | 12.0 s | 400 µs | 1.50 ms | 11.0 MB | 0.66× | 0 |"
    );
    let direct = row(&md, "Keep-alive HTTP/1.1 requests, closed loop", "direct");
    assert_eq!(
        direct,
        "| direct | 95,000 | — | — | 400 µs | 1.50 ms | — | — | 0 |"
    );
    let latency = row(&md, "Latency at 5,000 req/s, open loop", "meshguard-pair");
    assert!(latency.starts_with("| meshguard-pair | 5,000 / 4,990 | 210 µs | 300 µs | 570 µs | 1.40 ms | 4.00 ms | +130 µs | +180 µs | +320 µs | 0 |"), "{latency}");
    let bulk = row(&md, "One TCP stream, bulk", "meshguard-pair");
    // 1.9 GB/s for 10 s over 14 CPU-s.
    assert_eq!(
        bulk,
        "| meshguard-pair | 1,900 MB/s | 59.4 % | 14.0 s | 1,357 | 0 |"
    );
    let idle = row(&md, "Idle mTLS connections", "meshguard-inbound");
    assert_eq!(
        idle,
        "| meshguard-inbound | 9.0 MB | 15.8 MB (1,000 open) | 7.0 KB | 0 |"
    );
    let resilience = row(
        &md,
        "One of three replicas killed during an open-loop run at 1000 requests/s",
        "nginx",
    );
    assert_eq!(
        resilience,
        "| nginx | 1,000 / 1,000 | 3 | 500 µs | 5.50 ms | +5.00 ms | 16.5 ms | 0.50 s | 0 |"
    );
    assert!(md.contains("| idle RSS | RSS with 1,000 conns | per connection | errors |"));
    assert!(md.contains(
        "Per proxy CPU-second, meshguard-inbound does 3.37× nginx's, 4.44× haproxy's work."
    ));
}

#[test]
fn goals_come_first_with_verdicts() {
    let md = markdown(&report(), &[]);
    let goals_at = md.find("## Goals (ANCHORS.md)").expect("goals section");
    let first_scenario = md.find("## Keep-alive").expect("scenario section");
    assert!(goals_at < first_scenario);
    assert!(md.contains("| what | meshguard here | goal | peers here | reference | verdict |"));
    assert!(md.contains("| New full mTLS connections (handshake + 1 request) per proxy CPU-second | 3,200 | ≥ 3,000 | nginx 950; haproxy 720 | nginx ~950, haproxy ~720 (ANCHORS, this machine size) | ✔ |"));
    assert!(md.contains("| Keep-alive mTLS requests per proxy CPU-second | 52,000 | ≥ 60,000 |"));
    assert!(
        md.lines()
            .any(|l| l.starts_with("| Keep-alive mTLS") && l.ends_with("| ✘ |"))
    );
    assert!(
        md.lines()
            .any(|l| l.starts_with("| Idle RSS") && l.ends_with("| — |"))
    );
}

#[test]
fn a_debug_build_is_announced_loudly() {
    let mut report = sample::report();
    report.meta.build_profile = "debug".to_owned();
    report.meta.targets[3].skipped =
        Some("nginx is not installed: apt-get install nginx-light".to_owned());
    report.goals = goal_rows(&report);
    let md = markdown(&report, &[]);
    let warning = md.find("DEBUG BUILD").expect("debug warning");
    assert!(warning < md.find("## Goals").expect("goals"));
    assert!(md.contains("| meshguard | 0.1.0 (debug build) |"));
    assert!(md.contains("| nginx | nginx, TLS 1.3, client cert verified | skipped: nginx is not installed: apt-get install nginx-light |"));
    let goals = md
        .split("## Goals")
        .nth(1)
        .and_then(|g| g.split("\n## ").next());
    let goals = goals.expect("goals section");
    assert!(goals.contains("| 3,200 |"), "figures are still shown");
    assert!(
        !goals.contains("| ✔ |") && !goals.contains("| ✘ |"),
        "no verdict on a debug build"
    );
}

#[test]
fn charts_are_linked_where_they_belong() {
    let md = markdown(&report(), &charts());
    let latency = md
        .find("![chart latency-1000.svg](latency-1000.svg)")
        .expect("latency chart");
    assert!(latency > md.find("## Latency at 1,000").expect("latency section"));
    assert!(latency < md.find("## Latency at 5,000").expect("next section"));
    let throughput = md
        .find("![chart throughput.svg](throughput.svg)")
        .expect("throughput chart");
    assert!(throughput > md.find("## Charts").expect("charts section"));
    assert!(!md.contains("cpu.svg"), "only charts that exist are linked");
}

#[test]
fn regressions_section_follows_the_baseline() {
    let mut report = report();
    assert!(markdown(&report, &[]).contains("No baseline given"));
    report.baseline = Some("perf/baselines/report.json".to_owned());
    assert!(markdown(&report, &[]).contains("None beyond the threshold."));
    report.regressions.push(Regression {
        scenario: "keepalive".to_owned(),
        target: "meshguard-inbound".to_owned(),
        figure: "per_cpu_s".to_owned(),
        baseline: 52_000.0,
        now: 31_200.0,
        worse_by: 0.4,
    });
    let md = markdown(&report, &[]);
    assert!(
        md.contains("| keepalive | meshguard-inbound | per_cpu_s | 52,000 | 31,200 | 40.0 % |"),
        "{md}"
    );
}
