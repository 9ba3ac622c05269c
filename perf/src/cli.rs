//! The `meshguard perf` command line: one subcommand per mode, each turned into a run and a report.
//! The root binary only flattens [`Command`] in and calls [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::compare::CompareArgs;
use crate::measure::{handshake, http, tcp, upstream};
use crate::rate::{Rate, parse_duration};
use crate::soak::SoakArgs;
use crate::tls::TlsFiles;

/// `meshguard perf` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// GET requests on kept-alive HTTP/1.1 or HTTP/2 connections, open loop at a fixed rate.
    Http(HttpArgs),
    /// New connection (full or resumed TLS handshake) and one request each.
    Handshake(HandshakeArgs),
    /// TCP echo: ping-pong latency, or bulk throughput per stream.
    Tcp(TcpArgs),
    /// Serve the built-in fast upstream (HTTP/1.1, HTTP/2 and TCP echo on one port).
    Upstream(UpstreamArgs),
    /// Build direct, meshguard and peer proxies on loopback, run every scenario against each
    /// (interleaved) and write report.md, report.json and SVG charts.
    Compare(CompareArgs),
    /// A bounded mixed run through a sidecar pair (good requests, bad clients, rotations, policy
    /// edits) that passes only when nothing failed and descriptors and memory return afterwards.
    Soak(SoakArgs),
}

/// Options every load mode shares.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Requests per second in total (open loop), or `max` for a closed loop.
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(Rate))]
    pub rate: Rate,
    /// How long to send, e.g. `10s`, `500ms`, `1m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent connections (one request in flight on each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// A request taking longer than this counts as a `timeout` error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// TLS options: `--bundle` (with `https://` or a TLS target) turns TLS on; `--cert`/`--key` make it mTLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Our SVID certificate chain (PEM), for mTLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Our SVID private key (PEM), for mTLS.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Trust bundle of the server's trust domain (PEM or SPIFFE JWK Set).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// SPIFFE ID the server must present (`spiffe://td/path`, or `spiffe://td/prefix/*`).
    #[arg(long, value_name = "ID")]
    pub expect_id: Option<String>,
}

impl TlsArgs {
    /// The options as the TLS module takes them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            bundle: self.bundle.clone(),
            expect_id: self.expect_id.clone(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// URL to GET, `http://HOST:PORT/PATH` or `https://...` (TLS; mTLS with --cert/--key).
    #[arg(long)]
    pub target: String,
    /// Speak HTTP/2 (prior knowledge on plaintext, ALPN h2 over TLS) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HandshakeArgs {
    /// `HOST:PORT` of the target.
    #[arg(long)]
    pub target: String,
    /// Resume TLS sessions (tickets) instead of full handshakes.
    #[arg(long)]
    pub resume: bool,
    /// Make the one request a 1-byte TCP echo instead of HTTP/1.1 `GET /` (for L4 targets).
    #[arg(long)]
    pub echo: bool,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TcpArgs {
    /// `HOST:PORT` of a TCP echo server (the built-in upstream is one).
    #[arg(long)]
    pub target: String,
    /// Stream as fast as possible and report throughput per stream, instead of ping-pong latency.
    /// Bulk ignores --rate and --timeout: each of --connections streams for --duration.
    #[arg(long)]
    pub bulk: bool,
    /// Bytes per ping-pong message, or per write in bulk mode.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free port and prints it).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Size of each HTTP response body.
    #[arg(long, default_value_t = 2)]
    pub response_bytes: usize,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Wait this long before every HTTP response, e.g. `20ms` (a slow replica; default none).
    #[arg(long, value_parser = parse_duration)]
    pub response_delay: Option<Duration>,
    /// Serve mTLS with this SVID; clients must present an SVID too (`--expect-id` narrows which).
    #[command(
        flatten,
        next_help_heading = "mTLS (server side: --cert/--key are the upstream's SVID, --bundle verifies clients, --expect-id names the client IDs allowed)"
    )]
    pub tls: TlsArgs,
}

/// Runs one `meshguard perf` subcommand on its own multi-threaded runtime.
pub fn run(command: Command) -> anyhow::Result<()> {
    let threads = match &command {
        Command::Http(a) => a.load.threads,
        Command::Handshake(a) => a.load.threads,
        Command::Tcp(a) => a.load.threads,
        Command::Upstream(a) => a.threads,
        Command::Compare(_) | Command::Soak(_) => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async move {
        let (report, json) = match command {
            Command::Http(args) => (http(&args).await?, args.load.json),
            Command::Handshake(args) => (handshake(&args).await?, args.load.json),
            Command::Tcp(args) => (tcp(&args).await?, args.load.json),
            Command::Upstream(args) => return upstream(&args).await,
            Command::Compare(args) => return compare(&args).await,
            Command::Soak(args) => return soak(&args).await,
        };
        out!("{report}")?;
        if let Some(path) = json {
            report.write_json(&path)?;
        }
        let failed: u64 = report.errors.values().sum();
        anyhow::ensure!(
            report.completed > 0 || failed == 0,
            "every operation failed ({failed} errors); is the target up and are the TLS options right?"
        );
        Ok(())
    })
}

/// `perf soak`: runs, prints the report and fails when any check failed.
async fn soak(args: &SoakArgs) -> anyhow::Result<()> {
    let report = crate::soak::run(args).await?;
    out!("{report}")?;
    outln!("report written to {}", args.out.join("report.md").display())?;
    anyhow::ensure!(
        report.passed,
        "the soak failed: see the FAILED checks above and the sidecar logs in {}",
        args.out.join("run/logs").display()
    );
    Ok(())
}

/// `perf compare`: runs, writes the report, and fails on errors in `--smoke` or on regressions.
async fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let outcome = crate::compare::run(args).await?;
    let report = &outcome.report;
    outln!("report written to {}", outcome.report_md.display())?;
    for goal in &report.goals {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        };
        outln!(
            "  {}: {} (goal {}) {verdict}",
            goal.what,
            goal.measured,
            goal.goal
        )?;
    }
    if args.smoke {
        let failed: Vec<String> = report
            .scenarios
            .iter()
            .flat_map(|s| s.targets.iter().map(move |t| (s, t)))
            .filter(|(_, t)| t.median.errors > 0 || t.median.completed == 0)
            .map(|(s, t)| {
                format!(
                    "{} against {}: {} errors, {} completed",
                    s.key, t.target, t.median.errors, t.median.completed
                )
            })
            .collect();
        anyhow::ensure!(
            failed.is_empty(),
            "the smoke run had failures (see {}): {}",
            outcome.report_md.display(),
            failed.join("; ")
        );
        outln!("smoke: every scenario completed against every target without errors")?;
    }
    if !report.regressions.is_empty() {
        for r in &report.regressions {
            outln!(
                "  REGRESSION {} / {} {}: {:.3} -> {:.3} ({:.0} % worse)",
                r.scenario,
                r.target,
                r.figure,
                r.baseline,
                r.now,
                r.worse_by * 100.0
            )?;
        }
        anyhow::bail!(
            "{} figures regressed beyond {:.0} % against the baseline; see {}",
            report.regressions.len(),
            args.threshold * 100.0,
            outcome.report_md.display()
        );
    }
    Ok(())
}
