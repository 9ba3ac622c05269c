//! `meshguard perf compare`: builds the topology on loopback (the built-in upstream, meshguard
//! sidecars, peer proxies when installed), runs each scenario against each target interleaved
//! (A B C A B C ...: drift of a shared machine spreads over every target instead of landing on
//! one), samples the proxies' CPU time and memory from /proc, and writes `report.json`,
//! `report.md` and SVG charts.
//!
//! - [`topology`] starts the processes ([`process`], [`peers`], [`pki`], [`pool`]); [`procstat`]
//!   reads /proc.
//! - [`scenarios`] runs one scenario against one target ([`resilience`] the one that kills a
//!   replica); this module orders the runs, takes
//!   medians and assembles the [`model::CompareReport`].
//! - [`goals`], [`baseline`], [`render`], [`charts`] turn the report into verdicts and files.

mod assemble;
pub mod baseline;
pub mod charts;
pub mod goals;
pub mod model;
pub mod peers;
pub mod pki;
pub mod pool;
pub mod process;
pub mod procstat;
pub mod render;
pub mod resilience;
pub mod scenarios;
pub mod topology;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use self::assemble::assemble;
use self::model::{CompareReport, Figures, Meta, ScenarioKind, Settings};
use self::peers::PeerKind;
use self::scenarios::{RunSettings, Scenario};
use self::topology::{Topology, TopologyOptions};
use crate::rate::parse_duration;

/// `meshguard perf compare` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Directory for report.md, report.json and the SVG charts (created if missing).
    #[arg(long, value_name = "DIR", default_value = "perf-report")]
    pub out: PathBuf,
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Interleaved rounds; every figure is the median of the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Connections for keep-alive and latency-at-rate runs.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// Concurrent connections of the handshake runs (each: handshake, one request, close).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub handshake_connections: u16,
    /// Idle mTLS connections held open to measure memory per connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub idle_connections: u32,
    /// Fixed rates (requests/s) of the latency scenarios, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<f64>,
    /// Peers to compare when installed (`nginx`, `haproxy`, `stunnel`), comma-separated, or `none`.
    #[arg(long, value_delimiter = ',', default_value = "nginx,haproxy,stunnel")]
    pub peers: Vec<String>,
    /// Worker threads per meshguard proxy (peers run one worker: keep 1 to compare per core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_threads: u16,
    /// The meshguard binary under test (default: this one).
    #[arg(long, value_name = "PATH")]
    pub meshguard: Option<PathBuf>,
    /// An earlier report.json: figures worse than it beyond --threshold are flagged (non-zero exit).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Relative change beyond which a figure counts as a regression (0.25 = 25 %).
    #[arg(long, default_value_t = 0.25)]
    pub threshold: f64,
    /// Run only these scenarios (comma-separated keys: idle, handshake, keepalive, latency, bulk,
    /// resilience).
    #[arg(long, value_delimiter = ',', value_name = "KEYS")]
    pub scenarios: Vec<String>,
    /// A short run that only checks every scenario completes without errors (CI); no timings.
    #[arg(long)]
    pub smoke: bool,
}

/// What a comparison ended with, for the exit status.
#[derive(Debug)]
pub struct Outcome {
    pub report: CompareReport,
    pub report_md: PathBuf,
}

/// Runs the comparison and writes the report files.
pub async fn run(args: &CompareArgs) -> anyhow::Result<Outcome> {
    let args = &effective(args);
    anyhow::ensure!(
        args.threshold > 0.0 && args.threshold.is_finite(),
        "--threshold {} is not valid: give a positive fraction such as 0.25 for 25 %",
        args.threshold
    );
    let peers = peer_kinds(&args.peers)?;
    // Read before measuring: a baseline that does not parse must not cost a whole run.
    let baseline = args.baseline.as_deref().map(baseline::load).transpose()?;
    let meshguard = match &args.meshguard {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("could not find the meshguard binary to test")?,
    };
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "could not create the report directory {}",
            args.out.display()
        )
    })?;
    let scratch = tempfile::Builder::new()
        .prefix("meshguard-perf-compare-")
        .tempdir()
        .context("could not create a scratch directory")?;
    let started = jiff::Timestamp::now();
    let mut topology = Topology::build(&TopologyOptions {
        meshguard,
        dir: scratch.path().to_owned(),
        peers,
        proxy_threads: args.proxy_threads,
    })?;
    // Idle memory before any load: what a freshly started proxy holds.
    for target in &mut topology.targets {
        if !target.pids.is_empty() {
            target.startup_rss = Some(procstat::usage(&target.pids)?.rss_bytes);
        }
    }

    let scenarios = selected(scenario_list(args), &args.scenarios)?;
    let settings = RunSettings {
        duration: args.duration,
        connections: args.connections,
        handshake_connections: args.handshake_connections,
        idle_connections: args.idle_connections,
    };
    let total_runs: usize = scenarios
        .iter()
        .map(|s| {
            let targets = topology.targets.iter();
            targets.filter(|t| s.endpoint(t).is_some()).count() * args.rounds as usize
        })
        .sum();
    let progress = ProgressBar::new(total_runs as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let mut results = Vec::new();
    for scenario in &scenarios {
        let mut rounds: Vec<(&'static str, Vec<Figures>)> = Vec::new();
        for _round in 0..args.rounds {
            for target in topology.targets.clone() {
                let target = &target;
                if scenario.endpoint(target).is_none() {
                    continue;
                }
                progress.set_message(format!("{} / {}", scenario.key, target.key));
                let pool = &mut topology.pool;
                let figures = scenario
                    .run(target, settings, pool)
                    .await
                    .with_context(|| {
                        format!(
                            "the {} scenario against {} failed",
                            scenario.key, target.key
                        )
                    })?;
                topology.check_alive().with_context(|| {
                    format!(
                        "a process died during {} against {}",
                        scenario.key, target.key
                    )
                })?;
                say(&progress, &line(scenario, target.key, &figures));
                progress.inc(1);
                match rounds.iter_mut().find(|(key, _)| *key == target.key) {
                    Some((_, list)) => list.push(figures),
                    None => rounds.push((target.key, vec![figures])),
                }
                // Connections of the last run close; TIME_WAIT and lingering tasks settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        results.push(assemble(scenario, rounds));
    }
    progress.finish_and_clear();
    let infos = topology.infos.clone();
    drop(topology);

    let mut report = CompareReport {
        meta: Meta {
            started: started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            meshguard_version: env!("CARGO_PKG_VERSION").to_owned(),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            settings: Settings {
                duration_s: args.duration.as_secs_f64(),
                rounds: args.rounds,
                connections: u32::from(args.connections),
                handshake_connections: u32::from(args.handshake_connections),
                idle_connections: args.idle_connections,
                rates: args.rates.clone(),
            },
            targets: infos,
            smoke: args.smoke,
        },
        scenarios: results,
        goals: Vec::new(),
        regressions: Vec::new(),
        baseline: None,
        regression_threshold: None,
    };
    report.goals = goals::goals(&report);
    if let (Some(path), Some(baseline)) = (&args.baseline, &baseline) {
        if baseline.meta.build_profile != report.meta.build_profile
            || baseline.meta.smoke != report.meta.smoke
        {
            eprintln!(
                "warning: the baseline {} is a {} build{} and this run a {} build{}: comparing \
                 them is mostly noise; compare runs made the same way",
                path.display(),
                baseline.meta.build_profile,
                if baseline.meta.smoke { " (smoke)" } else { "" },
                report.meta.build_profile,
                if report.meta.smoke { " (smoke)" } else { "" },
            );
        }
        report.regressions = baseline::regressions(baseline, &report, args.threshold);
        report.baseline = Some(path.display().to_string());
        report.regression_threshold = Some(args.threshold);
    }
    let json = serde_json::to_string_pretty(&report).context("could not encode report.json")?;
    let json_path = args.out.join("report.json");
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    let charts = charts::write_all(&report, &args.out)?;
    let report_md = args.out.join("report.md");
    std::fs::write(&report_md, render::markdown(&report, &charts))
        .with_context(|| format!("could not write {}", report_md.display()))?;
    Ok(Outcome { report, report_md })
}

/// `--smoke` shrinks everything: it proves each scenario runs, not how fast.
fn effective(args: &CompareArgs) -> CompareArgs {
    let mut args = args.clone();
    if args.smoke {
        args.duration = args.duration.min(Duration::from_millis(300));
        args.rounds = 1;
        args.connections = args.connections.min(2);
        args.handshake_connections = args.handshake_connections.min(2);
        args.idle_connections = args.idle_connections.min(20);
        args.rates = vec![200.0];
    }
    args
}

fn peer_kinds(names: &[String]) -> anyhow::Result<Vec<PeerKind>> {
    let mut kinds = Vec::new();
    for name in names {
        match name.trim() {
            "none" | "" => {}
            "nginx" => kinds.push(PeerKind::Nginx),
            "haproxy" => kinds.push(PeerKind::Haproxy),
            "stunnel" | "stunnel-pair" => kinds.push(PeerKind::StunnelPair),
            other => anyhow::bail!(
                "--peers {other:?} is not a peer this harness knows: use nginx, haproxy, stunnel or none"
            ),
        }
    }
    Ok(kinds)
}

/// The scenarios `--scenarios` asks for (all when empty); `latency` stands for every rate.
fn selected(all: Vec<Scenario>, wanted: &[String]) -> anyhow::Result<Vec<Scenario>> {
    if wanted.is_empty() {
        return Ok(all);
    }
    let known = [
        "idle",
        "handshake",
        "keepalive",
        "latency",
        "bulk",
        "resilience",
    ];
    for key in wanted {
        anyhow::ensure!(
            known.contains(&key.as_str()),
            "--scenarios {key:?} is not a scenario: use any of {}",
            known.join(", ")
        );
    }
    Ok(all
        .into_iter()
        .filter(|s| {
            let family = s.key.split('-').next().unwrap_or_default();
            wanted.iter().any(|w| w == family)
        })
        .collect())
}

fn scenario_list(args: &CompareArgs) -> Vec<Scenario> {
    let mut list = vec![
        Scenario {
            key: "idle".into(),
            title: format!(
                "Memory with {} idle mTLS connections",
                args.idle_connections
            ),
            kind: ScenarioKind::Idle,
            note: "Measured first, on freshly started proxies. Each connection made one HTTP/1.1 \
                   request, then sat idle; per connection = (RSS while holding them - RSS right \
                   after start) / connections, so memory the proxy keeps after the first round \
                   counts in every round."
                .into(),
            rate: None,
        },
        Scenario {
            key: "handshake".into(),
            title: "New mTLS connections (full handshake + one request each), closed loop".into(),
            kind: ScenarioKind::Handshake,
            note: format!(
                "{} connections at a time, no session resumption. Direct is the upstream \
                 terminating mTLS itself with rustls, so its rate is the in-process ceiling.",
                args.handshake_connections
            ),
            rate: None,
        },
        Scenario {
            key: "keepalive".into(),
            title: "Keep-alive HTTP/1.1 requests, closed loop".into(),
            kind: ScenarioKind::Throughput,
            note: format!(
                "{} kept-alive connections, one request in flight on each. The pair is entered in \
                 plaintext (the app's side); single proxies are entered with mTLS.",
                args.connections
            ),
            rate: None,
        },
    ];
    for &rate in &args.rates {
        list.push(Scenario {
            key: format!("latency-{rate}"),
            title: format!("Latency at {rate} requests/s, open loop"),
            kind: ScenarioKind::LatencyAtRate,
            note: format!(
                "Latency from each request's intended send time (no coordinated omission), \
                 {} kept-alive HTTP/1.1 connections.",
                args.connections
            ),
            rate: Some(rate),
        });
    }
    list.push(Scenario {
        key: "bulk".into(),
        title: "Bulk TCP throughput, one stream, through an L4 pair".into(),
        kind: ScenarioKind::Bulk,
        note: "One connection writes 64 KiB chunks for the whole run while reading the echo; \
               figures are bytes echoed back per second."
            .into(),
        rate: None,
    });
    let rate = args.rates.first().copied().unwrap_or(1000.0);
    list.push(Scenario {
        key: "resilience".into(),
        title: format!(
            "One of three replicas killed during an open-loop run at {rate} requests/s"
        ),
        kind: ScenarioKind::Resilience,
        note: format!(
            "Each proxy balances one route over the same three replicas with its own failover: \
             meshguard's defaults (P2C peak-EWMA, ejection after 5 consecutive failures, retries \
             of idempotent requests within a 20 % budget); nginx round robin with \
             `max_fails=5 fail_timeout=1s` and `proxy_next_upstream error timeout` (3 tries); \
             haproxy round robin with `observe layer4` + `check`, `retry-on conn-failure \
             empty-response response-timeout` and `option redispatch` (3 tries). Each round runs \
             the route twice back to back for at most 2 s each (the failover's requests would vanish \
             in a longer run's p99), {} kept-alive HTTP/1.1 connections: steady, then with \
             replica 0 SIGKILLed a tenth of the way in (restarted after the run). Failed = \
             requests of the faulted run that got an error; added p99 = its p99 minus the steady \
             run's.",
            args.connections
        ),
        rate: Some(rate),
    });
    list
}

/// Prints a finished run above the progress bar, or as a plain line when stderr is not a terminal.
fn say(progress: &ProgressBar, line: &str) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}

fn line(scenario: &Scenario, target: &str, f: &Figures) -> String {
    let headline = match scenario.kind {
        ScenarioKind::Idle => format!(
            "{} connections, {:.1} KB each",
            f.idle_connections.unwrap_or(0),
            f.memory_per_conn_bytes.unwrap_or(0.0) / 1024.0
        ),
        ScenarioKind::Bulk => format!("{:.0} MB/s", f.bytes_per_s.unwrap_or(0.0) / 1e6),
        ScenarioKind::Resilience => format!(
            "{:.0}/s, failed during the fault {}, p99 steady {} us, with the fault {} us",
            f.achieved_rate,
            f.failed_during_fault.unwrap_or(0),
            f.steady_latency_us.map_or(0, |l| l.p99),
            f.latency_us.map_or(0, |l| l.p99),
        ),
        _ => {
            let (p50, p99) = f.latency_us.map_or((0, 0), |l| (l.p50, l.p99));
            format!("{:.0}/s, p50 {p50} us, p99 {p99} us", f.achieved_rate)
        }
    };
    let cpu = match f.per_cpu_s {
        Some(per) if scenario.kind != ScenarioKind::Bulk => {
            format!(", {per:.0} per proxy CPU-second")
        }
        _ => String::new(),
    };
    format!(
        "{:<14} {:<18} {headline}{cpu}, errors {}",
        scenario.key, target, f.errors
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
