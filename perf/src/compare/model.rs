//! The figures `perf compare` produces, as one serialisable document: `report.json` is this
//! written out, `report.md` and the charts are rendered from it, and `--baseline FILE` reads an
//! older one back. Field names are a contract (baselines are committed), so add, do not rename.

use serde::{Deserialize, Serialize};

use crate::report::LatencySummary;

/// Everything one `perf compare` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub meta: Meta,
    /// In the order they ran; each holds every target's figures.
    pub scenarios: Vec<ScenarioResult>,
    /// The ANCHORS.md goals next to what this run measured.
    pub goals: Vec<GoalRow>,
    /// Filled when `--baseline FILE` was given: figures worse than the baseline beyond the threshold.
    #[serde(default)]
    pub regressions: Vec<Regression>,
    /// The baseline compared against, as given on the command line.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The `--threshold` regressions were judged by (0.25 = 25 %), when a baseline was given.
    #[serde(default)]
    pub regression_threshold: Option<f64>,
}

/// Where and how the run was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// RFC 3339 UTC start time.
    pub started: String,
    /// meshguard's version (`CARGO_PKG_VERSION`) and build profile of the binary under test.
    pub meshguard_version: String,
    /// `release` or `debug`: debug figures show the harness works, not the speed.
    pub build_profile: String,
    /// CPUs online and the CPU model name from /proc/cpuinfo.
    pub cpus: usize,
    pub cpu_model: String,
    /// `uname -r` equivalent from /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// The settings the run used.
    pub settings: Settings,
    /// Every target considered, with whether it ran and why not.
    pub targets: Vec<TargetInfo>,
    /// Whether this was `--smoke` (short runs that only check each scenario completes).
    pub smoke: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Length of each measured run.
    pub duration_s: f64,
    /// Interleaved rounds (A B A B ...): each target runs once per round, the figures are medians.
    pub rounds: u32,
    /// Connections of the keep-alive and latency-at-rate scenarios.
    pub connections: u32,
    /// Connections of the handshake scenario (each does handshake + one request + close).
    pub handshake_connections: u32,
    /// Idle mTLS connections opened for the memory scenario.
    pub idle_connections: u32,
    /// The fixed rates of the latency scenarios, requests per second.
    pub rates: Vec<f64>,
}

/// One target of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Stable key: `direct`, `meshguard-pair`, `meshguard-inbound`, `nginx`, `haproxy`,
    /// `stunnel-pair`.
    pub key: String,
    /// What it is, e.g. "nginx 1.22.1, 1 worker, TLS 1.3, client cert verified".
    pub description: String,
    /// `None` when it ran; otherwise why it did not (e.g. "nginx is not installed: apt-get install nginx-light").
    pub skipped: Option<String>,
}

/// One scenario (e.g. keep-alive requests at max rate) across every target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Stable key: `keepalive`, `handshake`, `latency-1000`, `latency-5000`, `bulk`, `idle`.
    pub key: String,
    /// Human title, e.g. "Keep-alive HTTP/1.1 requests, closed loop".
    pub title: String,
    pub kind: ScenarioKind,
    /// What "direct" means here and anything a reader needs to interpret the numbers.
    pub note: String,
    pub targets: Vec<TargetResult>,
}

/// Which figures a scenario fills in, so renderers know what to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Closed loop: `achieved_rate`, `per_cpu_s` are the headline; latency shown too.
    Throughput,
    /// New connection + one request each: `achieved_rate` (connections/s), `per_cpu_s`.
    Handshake,
    /// Open loop at `target_rate`: latency percentiles and `added_latency_us` are the headline.
    LatencyAtRate,
    /// One TCP stream as fast as it goes: `bytes_per_s` and `fraction_of_direct`.
    Bulk,
    /// N idle mTLS connections: `memory_per_conn_bytes`, `idle_rss_bytes`.
    Idle,
    /// Open loop over three replicas, one killed mid-run: `failed_during_fault` and
    /// `fault_added_p99_us` are the headline.
    Resilience,
}

/// One target's figures in one scenario: each round, and the median of the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    pub target: String,
    /// One entry per round, in the order they ran.
    pub rounds: Vec<Figures>,
    /// Median of each figure over the rounds (errors: the sum).
    pub median: Figures,
    /// Against direct in the same scenario (absent for direct itself and when direct did not run).
    pub vs_direct: Option<VsDirect>,
}

/// The figures of one run. Optional ones are absent when the scenario does not measure them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Operations per second completed (requests, or new connections for `handshake`).
    pub achieved_rate: f64,
    /// Operations per second asked for (open loop); `None` for closed loop.
    pub target_rate: Option<f64>,
    /// Operations that completed (requests, connections; bulk: streams; idle: connections held).
    pub completed: u64,
    /// Operations that failed, all kinds together.
    pub errors: u64,
    /// Latency from intended send time (open loop) or send (closed loop), microseconds.
    pub latency_us: Option<LatencySummary>,
    /// CPU seconds (user + system) the target's proxy processes used during the run; 0 for direct.
    pub proxy_cpu_s: f64,
    /// Operations per proxy CPU-second (`completed / proxy_cpu_s`; for bulk, bytes echoed per
    /// proxy CPU-second); `None` for direct.
    pub per_cpu_s: Option<f64>,
    /// Resident memory of the proxy processes at the end of the run.
    pub rss_bytes: Option<u64>,
    /// Bulk scenario: bytes per second echoed through one stream.
    pub bytes_per_s: Option<f64>,
    /// Idle scenario: resident memory before any connection was opened.
    pub idle_rss_bytes: Option<u64>,
    /// Idle scenario: (RSS with N idle connections - RSS before) / N.
    pub memory_per_conn_bytes: Option<f64>,
    /// Idle scenario: connections that were open when memory was read.
    pub idle_connections: Option<u64>,
    /// Resilience: latency of the run just before the fault, same rate and target, no kill;
    /// `latency_us` is then the run in which a replica was killed.
    #[serde(default)]
    pub steady_latency_us: Option<LatencySummary>,
    /// Resilience: requests that failed in the run with the kill (`errors` counts the steady
    /// run's, which should be none).
    #[serde(default)]
    pub failed_during_fault: Option<u64>,
    /// Resilience: p99 of the run with the kill minus p99 of the steady run, microseconds.
    #[serde(default)]
    pub fault_added_p99_us: Option<i64>,
}

/// A target measured against direct in the same scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VsDirect {
    /// Latency scenarios: target p50/p90/p99 minus direct's, microseconds (can be negative in noise).
    pub added_p50_us: Option<i64>,
    pub added_p90_us: Option<i64>,
    pub added_p99_us: Option<i64>,
    /// Throughput and bulk: target achieved rate (or bytes/s) divided by direct's.
    pub fraction_of_direct: Option<f64>,
}

/// One ANCHORS.md goal next to this run's figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoalRow {
    /// e.g. "New full mTLS connections per proxy CPU-second".
    pub what: String,
    /// meshguard's figure in this run, formatted with its unit; "not measured" when it did not run.
    pub measured: String,
    /// The goal as ANCHORS.md states it, e.g. "≥ 3,000".
    pub goal: String,
    /// Peers measured in this run, e.g. "nginx 1,020; haproxy 800"; empty when none ran.
    pub peers_here: String,
    /// Figures ANCHORS.md quotes, e.g. "nginx ~950, haproxy ~720 (ANCHORS)".
    pub reference: String,
    /// `Some(true)` met, `Some(false)` not met, `None` when no verdict applies.
    pub met: Option<bool>,
}

/// A figure that got worse than the baseline by more than the threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Regression {
    pub scenario: String,
    pub target: String,
    /// e.g. `per_cpu_s`, `added_p99_us`, `fraction_of_direct`, `memory_per_conn_bytes`.
    pub figure: String,
    pub baseline: f64,
    pub now: f64,
    /// Relative change, signed so that positive is worse (e.g. 0.31 = 31 % worse).
    pub worse_by: f64,
}
