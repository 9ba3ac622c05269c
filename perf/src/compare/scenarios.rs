//! The scenarios of a comparison and how one of them is run against one target: the generator's
//! modes (`perf http`, `perf handshake`, `perf tcp --bulk`) aimed at the target's entry point,
//! with the target's processes' CPU time and memory read from /proc before and after.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::model::{Figures, ScenarioKind};
use super::pool::UpstreamPool;
use super::procstat::{self, Usage};
use super::resilience;
use super::topology::{Endpoint, Target};
use crate::cli::{HandshakeArgs, HttpArgs, LoadArgs, TcpArgs, TlsArgs};
use crate::http::{HttpTarget, HttpVersion};
use crate::measure;
use crate::rate::Rate;
use crate::report::Report;

/// One scenario as configured for this run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub key: String,
    pub title: String,
    pub kind: ScenarioKind,
    pub note: String,
    /// Open-loop rate for [`ScenarioKind::LatencyAtRate`].
    pub rate: Option<f64>,
}

/// The knobs every run of a comparison shares.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    pub duration: Duration,
    pub connections: u16,
    pub handshake_connections: u16,
    pub idle_connections: u32,
}

impl Scenario {
    /// The entry point of `target` this scenario uses; `None` when the target is not in it.
    pub fn endpoint<'t>(&self, target: &'t Target) -> Option<&'t Endpoint> {
        match self.kind {
            ScenarioKind::Throughput | ScenarioKind::LatencyAtRate => target.http.as_ref(),
            ScenarioKind::Handshake => target.handshake.as_ref(),
            ScenarioKind::Bulk => target.bulk.as_ref(),
            ScenarioKind::Idle => target.idle.as_ref(),
            ScenarioKind::Resilience => target.resilience.as_ref(),
        }
    }

    /// Runs the scenario once against `target` and measures it; the resilience scenario kills
    /// and restarts a replica of `pool`.
    pub async fn run(
        &self,
        target: &Target,
        settings: RunSettings,
        pool: &mut UpstreamPool,
    ) -> anyhow::Result<Figures> {
        let Some(endpoint) = self.endpoint(target) else {
            anyhow::bail!("{} is not part of the {} scenario", target.key, self.key);
        };
        match self.kind {
            ScenarioKind::Idle => return idle(endpoint, target, settings.idle_connections).await,
            ScenarioKind::Resilience => {
                let rate = self.rate.unwrap_or(1000.0);
                let load = http_load(endpoint, Rate::PerSecond(rate), settings);
                let before = usage(target)?;
                let mut figures = resilience::run(&load, pool).await?;
                let after = usage(target)?;
                figures.proxy_cpu_s = after.cpu.saturating_sub(before.cpu).as_secs_f64();
                figures.rss_bytes = (!target.pids.is_empty()).then_some(after.rss_bytes);
                return Ok(figures);
            }
            _ => {}
        }
        let before = usage(target)?;
        let report = self.load(endpoint, settings).await?;
        let after = usage(target)?;
        Ok(figures(&report, self.kind, before, after, target))
    }

    async fn load(&self, endpoint: &Endpoint, settings: RunSettings) -> anyhow::Result<Report> {
        let load = |rate: Rate, connections: u16| LoadArgs {
            rate,
            duration: settings.duration,
            connections,
            timeout: Duration::from_secs(5),
            threads: None,
            json: None,
        };
        let tls = endpoint.tls.clone().unwrap_or_default();
        match self.kind {
            ScenarioKind::Throughput | ScenarioKind::LatencyAtRate => {
                let rate = self.rate.map_or(Rate::Max, Rate::PerSecond);
                measure::http(&http_load(endpoint, rate, settings)).await
            }
            ScenarioKind::Handshake => {
                let args = HandshakeArgs {
                    target: endpoint.addr.to_string(),
                    resume: false,
                    echo: false,
                    load: load(Rate::Max, settings.handshake_connections),
                    tls,
                };
                measure::handshake(&args).await
            }
            ScenarioKind::Bulk => {
                let args = TcpArgs {
                    target: endpoint.addr.to_string(),
                    bulk: true,
                    size: 64 * 1024,
                    load: load(Rate::Max, 1),
                    tls,
                };
                measure::tcp(&args).await
            }
            ScenarioKind::Idle | ScenarioKind::Resilience => {
                unreachable!("{} is measured on its own", self.key)
            }
        }
    }
}

/// Keep-alive HTTP/1.1 requests to `endpoint` at `rate` over the run's connections.
fn http_load(endpoint: &Endpoint, rate: Rate, settings: RunSettings) -> HttpArgs {
    HttpArgs {
        target: endpoint.url(),
        http2: false,
        load: LoadArgs {
            rate,
            duration: settings.duration,
            connections: settings.connections,
            timeout: Duration::from_secs(5),
            threads: None,
            json: None,
        },
        tls: endpoint.tls.clone().unwrap_or_default(),
    }
}

fn usage(target: &Target) -> anyhow::Result<Usage> {
    if target.pids.is_empty() {
        return Ok(Usage::default());
    }
    procstat::usage(&target.pids)
        .with_context(|| format!("could not read the CPU and memory of {}", target.key))
}

fn figures(
    report: &Report,
    kind: ScenarioKind,
    before: Usage,
    after: Usage,
    target: &Target,
) -> Figures {
    let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    let has_proxy = !target.pids.is_empty();
    let per_cpu_s = (has_proxy && cpu > 0.0).then(|| report.completed as f64 / cpu);
    let mut figures = Figures {
        achieved_rate: report.achieved_rate,
        target_rate: report.target_rate,
        completed: report.completed,
        errors: report.errors.values().sum(),
        latency_us: Some(report.latency_us),
        proxy_cpu_s: cpu,
        per_cpu_s,
        rss_bytes: has_proxy.then_some(after.rss_bytes),
        ..Figures::default()
    };
    if kind == ScenarioKind::Bulk {
        // A bulk run completes one operation per stream; per CPU-second means bytes here.
        figures.latency_us = None;
        figures.bytes_per_s = Some(report.achieved_rate);
        let bytes = report.achieved_rate * report.duration_s;
        figures.per_cpu_s = (has_proxy && cpu > 0.0).then(|| bytes / cpu);
    }
    figures
}

/// Opens `n` mTLS connections to `endpoint`, one request on each so both sides finish setting up,
/// then reads the target's memory while they sit idle. Memory per connection is the growth over
/// the RSS the target had right after start: after a first round the allocator keeps the freed
/// connections' memory and reuses it, so growth from just before a later round would be almost
/// nothing, while the RSS holding `n` connections is the same in every round.
async fn idle(endpoint: &Endpoint, target: &Target, n: u32) -> anyhow::Result<Figures> {
    let files = endpoint
        .tls
        .as_ref()
        .map(TlsArgs::files)
        .unwrap_or_default();
    let http = Arc::new(HttpTarget::new(&endpoint.url(), HttpVersion::Http1, &files).await?);
    // Let the previous scenario's connections close before the reference reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = usage(target)?;
    let mut open = JoinSet::new();
    let mut senders = Vec::with_capacity(n as usize);
    let mut errors = 0u64;
    // A bounded number of handshakes at a time: the figure is memory, not connection rate.
    let mut started = 0;
    while started < n || !open.is_empty() {
        while started < n && open.len() < 32 {
            let http = Arc::clone(&http);
            open.spawn(async move {
                let (mut sender, _) = http.open().await?;
                http.request(&mut sender, false).await?;
                Ok::<_, crate::recorder::ErrorKind>(sender)
            });
            started += 1;
        }
        match open.join_next().await {
            Some(Ok(Ok(sender))) => senders.push(sender),
            Some(Ok(Err(_))) => errors += 1,
            Some(Err(join)) => return Err(join).context("an idle-connection task panicked"),
            None => break,
        }
    }
    // Give the proxy a moment to return transient buffers before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = usage(target)?;
    let held = senders.len() as u64;
    drop(senders);
    let reference = target.startup_rss.unwrap_or(before.rss_bytes);
    let grown = after.rss_bytes.saturating_sub(reference) as f64;
    Ok(Figures {
        completed: held,
        errors,
        proxy_cpu_s: after.cpu.saturating_sub(before.cpu).as_secs_f64(),
        rss_bytes: Some(after.rss_bytes),
        idle_rss_bytes: Some(reference),
        memory_per_conn_bytes: (held > 0).then(|| grown / held as f64),
        idle_connections: Some(held),
        ..Figures::default()
    })
}
