//! Each mode's run: connect the workers, drive the engine, and turn what it measured into a
//! [`Report`]. The arguments come from [`crate::cli`]; nothing here parses or prints.

use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{HandshakeArgs, HttpArgs, LoadArgs, TcpArgs, UpstreamArgs};
use crate::connect::Connector;
use crate::engine::{self, LoadSpec, RunOutcome};
use crate::handshake::{FirstRequest, HandshakeExchange};
use crate::http::{HttpExchange, HttpTarget, HttpVersion};
use crate::pacer::PacerClock;
use crate::recorder::{Latencies, Recorder};
use crate::report::{LatencySummary, Report, round2};
use crate::tcp::{self, PingPong};
use crate::tls;
use crate::upstream::Upstream;

fn spec(load: &LoadArgs) -> LoadSpec {
    LoadSpec {
        rate: load.rate,
        duration: load.duration,
        timeout: load.timeout,
        pacer: PacerClock::Precise,
    }
}

/// `perf http`: connects every worker first, so the run measures requests, not connection setup.
pub async fn http(args: &HttpArgs) -> anyhow::Result<Report> {
    let version = if args.http2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    let target = Arc::new(HttpTarget::new(&args.target, version, &args.tls.files()).await?);
    let mut exchanges = Vec::new();
    for _ in 0..args.load.connections {
        let mut exchange = HttpExchange::new(Arc::clone(&target));
        exchange
            .warm_up()
            .await
            .map_err(|kind| anyhow::anyhow!("could not connect to {}: {kind}", args.target))?;
        exchanges.push(exchange);
    }
    let out = engine::run(spec(&args.load), exchanges).await?;
    let protocol = if args.http2 { "HTTP/2" } else { "HTTP/1.1" };
    Ok(
        Report::from_outcome("http", &args.target, args.load.rate.target(), &out)
            .with("protocol", protocol),
    )
}

/// `perf handshake`: the HTTP request uses `https://` when TLS options are given.
pub async fn handshake(args: &HandshakeArgs) -> anyhow::Result<Report> {
    let files = args.tls.files();
    let tls_config = if files.wants_tls() {
        let alpn: &[&[u8]] = if args.echo { &[] } else { &[b"http/1.1"] };
        Some(files.client_config(alpn, args.resume)?)
    } else {
        None
    };
    let connector = Connector::for_addr(&args.target, tls_config).await?;
    let request = if args.echo {
        FirstRequest::Echo(connector)
    } else {
        let scheme = if files.wants_tls() { "https" } else { "http" };
        let url = format!("{scheme}://{}/", args.target);
        let target = HttpTarget::with_connector(&url, HttpVersion::Http1, connector)?;
        FirstRequest::Http(Arc::new(target))
    };
    let exchanges = (0..args.load.connections)
        .map(|_| HandshakeExchange::new(request.clone()))
        .collect();
    let out = engine::run(spec(&args.load), exchanges).await?;
    let mut handshakes = Latencies::default();
    let mut resumed = 0;
    for exchange in &out.exchanges {
        handshakes.merge(&exchange.handshakes);
        resumed += exchange.resumed;
    }
    Ok(
        Report::from_outcome("handshake", &args.target, args.load.rate.target(), &out)
            .with("handshakes_per_s", round2(out.achieved_rate()))
            .with("handshake_latency_us", summary_json(&handshakes))
            .with("handshakes", handshakes.len())
            .with("resumed_handshakes", resumed)
            .with("tls", files.wants_tls()),
    )
}

/// `perf tcp`: ping-pong through the engine, or bulk streams side by side.
pub async fn tcp(args: &TcpArgs) -> anyhow::Result<Report> {
    let files = args.tls.files();
    let tls_config = if files.wants_tls() {
        Some(files.client_config(&[], true)?)
    } else {
        None
    };
    let connector = Connector::for_addr(&args.target, tls_config).await?;
    if !args.bulk {
        let mut exchanges = Vec::new();
        for _ in 0..args.load.connections {
            let mut exchange = PingPong::new(connector.clone(), args.size);
            exchange
                .warm_up()
                .await
                .map_err(|kind| anyhow::anyhow!("could not connect to {}: {kind}", args.target))?;
            exchanges.push(exchange);
        }
        let out = engine::run(spec(&args.load), exchanges).await?;
        return Ok(Report::from_outcome(
            "tcp-ping-pong",
            &args.target,
            args.load.rate.target(),
            &out,
        )
        .with("message_bytes", args.size));
    }
    bulk(args, &connector).await
}

async fn bulk(args: &TcpArgs, connector: &Connector) -> anyhow::Result<Report> {
    let started = tokio::time::Instant::now();
    let streams: Vec<_> = (0..args.load.connections)
        .map(|_| {
            let connector = connector.clone();
            let (duration, size) = (args.load.duration, args.size.max(16 * 1024));
            tokio::spawn(async move { tcp::bulk_stream(&connector, duration, size).await })
        })
        .collect();
    let mut recorder = Recorder::default();
    let mut per_stream = Vec::new();
    let mut total = 0u64;
    for stream in streams {
        match stream.await.context("a bulk stream panicked")? {
            Ok(result) => {
                total += result.bytes;
                per_stream.push(round2(result.bytes_per_s() * 8.0 / 1e6));
            }
            Err(kind) => recorder.error(kind),
        }
    }
    let elapsed = started.elapsed();
    let out = RunOutcome {
        recorder,
        elapsed,
        completed: per_stream.len() as u64,
        attempted: u64::from(args.load.connections),
        exchanges: vec![(); usize::from(args.load.connections)],
    };
    let bytes_per_s = total as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut report = Report::from_outcome("tcp-bulk", &args.target, None, &out)
        .with("bytes", total)
        .with("rate_unit", "bytes/s")
        .with("throughput_mbit_s", round2(bytes_per_s * 8.0 / 1e6))
        .with("per_stream_mbit_s", per_stream);
    // Bulk has no request latency; its rate is bytes per second, as `rate_unit` says.
    report.achieved_rate = round2(bytes_per_s);
    Ok(report)
}

fn summary_json(latencies: &Latencies) -> serde_json::Value {
    serde_json::to_value(LatencySummary::from(latencies)).unwrap_or_default()
}

/// `perf upstream`: serves until interrupted.
pub async fn upstream(args: &UpstreamArgs) -> anyhow::Result<()> {
    let files = args.tls.files();
    let tls = if files.wants_tls() {
        Some(tls::server_config(&files, &[b"h2", b"http/1.1"])?)
    } else {
        None
    };
    let upstream = Upstream::bind(args.listen, tls, args.response_bytes)
        .await?
        .with_response_delay(args.response_delay.unwrap_or_default());
    let addr = upstream.local_addr()?;
    // It serves whether or not anyone still reads stdout.
    let _ = outln!("meshguard perf upstream listening on {addr} (HTTP/1.1, HTTP/2, TCP echo)");
    tokio::select! {
        () = upstream.serve() => Ok(()),
        signal = tokio::signal::ctrl_c() => signal.context("could not wait for Ctrl-C"),
    }
}
