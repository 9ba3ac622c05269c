//! `meshguard perf soak`: a bounded mixed run through a sidecar pair ([`pair`]) that checks the
//! proxy gives back what it takes. A short warm-up phase of the same mix comes first (so caches,
//! pools and session stores that fill once are in the baseline), then the baseline of each
//! sidecar's file descriptors and memory, then the measured phase ([`mix`]): good requests, bad
//! clients from the security catalogue ([`bad_clients`]), rotations and policy edits. Afterwards
//! the soak waits (bounded) for the descriptors to return and passes only when every good request
//! succeeded, no bad client was served, no sidecar panicked or exited, every rotation was served,
//! and descriptors and memory are back at the baseline. The report goes to `report.md` and
//! `report.json` ([`report`]).

pub mod attacker;
pub mod bad_clients;
pub mod mix;
pub mod pair;
pub mod report;
pub mod resources;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use self::bad_clients::Arsenal;
use self::mix::MixSettings;
use self::pair::Pair;
use self::report::{SidecarFigures, SoakReport};
use self::resources::Held;
use crate::compare::pki::Pki;
use crate::rate::parse_duration;

/// `meshguard perf soak` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Length of the measured mixed run (after a warm-up of a tenth of it, 5 s to 60 s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Good requests per second through the sidecar pair (HTTP/1.1, kept-alive, open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Kept-alive connections the good requests use.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// Good new mTLS connections per second straight to the inbound sidecar (one request each).
    #[arg(long, default_value_t = 10.0)]
    pub handshake_rate: f64,
    /// Bad clients per second, round-robin over the catalogue.
    #[arg(long, default_value_t = 12.0)]
    pub bad_rate: f64,
    /// Time between credential rotations of both sidecars.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub rotate_every: Duration,
    /// Time between policy edits (every third edit is broken and must be refused).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub reload_every: Duration,
    /// Memory a sidecar may hold above its baseline afterwards, in percent (allocators keep some).
    #[arg(long, default_value_t = 10.0)]
    pub rss_slack_percent: f64,
    /// Worker threads per sidecar.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_threads: u16,
    /// The meshguard binary under test (default: this one).
    #[arg(long, value_name = "PATH")]
    pub meshguard: Option<PathBuf>,
    /// Directory for report.md, report.json and the run's configs and logs (created if missing).
    #[arg(long, value_name = "DIR", default_value = "soak-report")]
    pub out: PathBuf,
}

/// How long the sidecars get to close what the run left open before the final sample.
const SETTLE: Duration = Duration::from_secs(60);
// A pooled connection left idle at the end must close before the settle window ends, or the
// descriptor check would count idle capacity as a leak.
const _: () = assert!(pair::POOL_IDLE_TIMEOUT.as_secs() < SETTLE.as_secs());

/// Runs the soak and writes the report; the caller decides the exit status from
/// [`SoakReport::passed`].
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    for (name, rate) in [
        ("--rate", args.rate),
        ("--handshake-rate", args.handshake_rate),
        ("--bad-rate", args.bad_rate),
    ] {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "{name} {rate} is not valid: give a positive number per second"
        );
    }
    let meshguard = match &args.meshguard {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("could not find the meshguard binary to test")?,
    };
    let dir = args.out.join("run");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("could not clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let threads = args.proxy_threads;
    let start_dir = dir.clone();
    let mut pair =
        tokio::task::spawn_blocking(move || Pair::start(&meshguard, &start_dir, threads))
            .await
            .context("the start-up task failed")??;
    let foreign = Pki::create(&dir.join("foreign-pki"))?;
    let arsenal = Arc::new(Arsenal::new(
        pair.inbound,
        &pair.pki,
        &foreign,
        &pair.intruder,
        &pair.prober,
    )?);
    let started = jiff::Timestamp::now();
    let mut settings = MixSettings {
        duration: (args.duration / 10).clamp(Duration::from_secs(5), Duration::from_secs(60)),
        rate: args.rate,
        connections: args.connections,
        handshake_rate: args.handshake_rate,
        bad_rate: args.bad_rate,
        rotate_every: args.rotate_every,
        reload_every: args.reload_every,
    };
    let mut edits = 0;
    // The warm-up rotates and edits at least once, so those paths are in the baseline too.
    settings.rotate_every = settings.rotate_every.min(settings.duration / 2);
    settings.reload_every = settings.reload_every.min(settings.duration / 2);
    mix::run(&pair, Arc::clone(&arsenal), settings, &mut edits).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The level at rest, not one instant of it: a pooled connection being replaced or a timer's
    // socket can move one sample by a descriptor, so the baseline is the most of six over 3 s.
    let mut baseline = sample(&pair)?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (level, now) in baseline.iter_mut().zip(sample(&pair)?) {
            *level = level.max(now);
        }
    }

    settings.duration = args.duration;
    settings.rotate_every = args.rotate_every;
    settings.reload_every = args.reload_every;
    let outcome = mix::run(&pair, arsenal, settings, &mut edits).await?;

    let settle_started = std::time::Instant::now();
    let mut after = sample(&pair)?;
    while after.iter().zip(&baseline).any(|(a, b)| a.fds > b.fds)
        && settle_started.elapsed() < SETTLE
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = sample(&pair)?;
    }
    let settled_in = settle_started.elapsed();
    pair.check_alive()?;

    let sidecars = pair
        .sidecars
        .iter()
        .zip(baseline.iter().zip(&after).zip(&outcome.peaks))
        .map(|(child, ((&baseline, &after), &peak))| {
            SidecarFigures::new(child.name(), child.log_path(), baseline, peak, after)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = SoakReport::new(args, started, settled_in, &outcome, sidecars);
    report.write(&args.out)?;
    Ok(report)
}

fn sample(pair: &Pair) -> anyhow::Result<Vec<Held>> {
    pair.sidecars
        .iter()
        .map(|c| Held::sample(c.pid()))
        .collect()
}
