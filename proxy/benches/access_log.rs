//! Access-log record encoding: what the writer task spends per line, and what one proxied HTTP
//! request spends on its log record on the data path.
//!
//! `cargo bench -p meshguard-proxy --bench access_log`; `-- --test` runs each bench once.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use meshguard_proxy::access_log::{AccessLog, ConnectionRecord, Direction, Outcome, encode_line};
use meshguard_proxy::http::exchange::{Exchange, InFlight, Reporting};
use meshguard_proxy::http::metrics::HttpMetrics;
use meshguard_proxy::http::record::HttpFields;
use meshguard_proxy::http::request_id::new_request_id;
use prometheus_client::metrics::counter::Counter;

/// A mesh inbound connection's record as an mTLS connection leaves it (allowed by a policy).
fn l4_record() -> ConnectionRecord {
    let source: SocketAddr = "10.1.7.23:44554".parse().expect("valid address");
    let mut r = ConnectionRecord::new(Direction::Inbound, "inbound:0.0.0.0:4143", source);
    r.duration_ms = 2.804_408_999_999_999_7;
    r.peer_id = Some("spiffe://bank.example/ns/payments/sa/payments".into());
    r.local_id = Some("spiffe://bank.example/ns/legacy/sa/core-banking-gateway".into());
    r.original_dst = Some("10.1.9.4:4143".into());
    r.upstream = Some("127.0.0.1:8080".into());
    r.bytes_in = 73;
    r.bytes_out = 11_264;
    r.tls_version = Some("TLSv1_3".into());
    r.cipher_suite = Some("TLS13_AES_128_GCM_SHA256".into());
    r.kx_group = Some("X25519MLKEM768".into());
    r.alpn = Some("h2".into());
    r.sni = Some("core-banking.legacy.svc".into());
    r.decision = Some(Outcome::Allow);
    r.policy = Some("payments-to-core-banking".into());
    r.reason = Some("payments may read accounts".into());
    r
}

/// A request line on the same connection: the L4 fields plus `http`.
fn http_record() -> ConnectionRecord {
    let mut r = l4_record();
    r.duration_ms = 0.412_731;
    r.bytes_in = 0;
    r.bytes_out = 1_482;
    r.http = Some(Box::new(HttpFields {
        method: "GET".parse().expect("a valid method"),
        authority: Some("core-banking.legacy.svc:8080".into()),
        path: "/api/v1/accounts/4711/balance".into(),
        version: "HTTP/2.0",
        status: 200,
        grpc_status: None,
        request_bytes: 0,
        response_bytes: 1_482,
        duration_ms: 0.412_731,
        upstream_ms: Some(0.301_552),
        request_id: "3f2b8c1e-9a4d-4e6f-b7a1-0c5d2e8f9b13".into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        user_agent: Some("grpc-java-netty/1.68.1".into()),
        reasons: vec!["payments may read accounts".into()],
        break_glass: false,
    }));
    r
}

fn quick<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .throughput(Throughput::Elements(1));
    group
}

/// The writer task's work per line: one record to one JSON line in a reused buffer.
fn encode(c: &mut Criterion) {
    for (name, record) in [
        ("access_log/encode_l4", l4_record()),
        ("access_log/encode_http_request", http_record()),
    ] {
        let mut group = quick(c, name);
        let mut line = Vec::with_capacity(1024);
        group.bench_function("json_line", |b| {
            b.iter(|| {
                line.clear();
                encode_line(black_box(&record), &mut line).expect("a record always encodes");
                black_box(line.len())
            })
        });
        group.finish();
    }
}

/// The data path's work per request for its log line: `Exchange::start` from the connection's
/// record, the decision, `finish`, and the report when the response body is dropped. The log
/// queue is never drained here (its writer task is not polled), so after the first record every
/// record is counted as dropped: this measures building and handing over the record, not encoding.
fn exchange(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    let _entered = runtime.enter();
    let (access_log, _writer) = AccessLog::with_writer(tokio::io::sink(), 1, Counter::default());
    let reporting = Reporting {
        listener: Arc::from("inbound:0.0.0.0:4143"),
        access_log,
        metrics: HttpMetrics::default(),
    };
    let in_flight = Arc::new(InFlight::default());
    let mut template = l4_record();
    template.decision = None;
    template.policy = None;
    template.reason = None;
    template.upstream = None;
    let mut request = Request::builder()
        .method("GET")
        .uri("/api/v1/accounts/4711/balance")
        .header("host", "core-banking.legacy.svc:8080")
        .header("user-agent", "grpc-java-netty/1.68.1")
        .header("x-request-id", "3f2b8c1e-9a4d-4e6f-b7a1-0c5d2e8f9b13")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(())
        .expect("a valid request");

    let mut group = quick(c, "access_log/http_exchange");
    group.bench_function("start_to_report", |b| {
        b.iter(|| {
            let mut exchange = Exchange::start(&mut request, &template, &reporting, &in_flight);
            exchange.line.decision = Some(Outcome::Allow);
            exchange.line.policy = Some("payments-to-core-banking".into());
            exchange.line.reason = Some("payments may read accounts".into());
            exchange.fields.reasons = vec!["payments may read accounts".into()];
            exchange.set_decision();
            exchange.line.upstream = Some("127.0.0.1:8080".into());
            exchange.forwarded = Some(Instant::now());
            let response = exchange.finish(Response::new(Empty::<Bytes>::new()));
            drop(black_box(response)); // the body's end writes the line
        })
    });
    // Parts of the above, to see where the time goes: the per-request copy of the connection's
    // record, and the request id a request without `x-request-id` gets.
    group.bench_function("clone_connection_record", |b| {
        b.iter(|| black_box(black_box(&template).clone()))
    });
    group.bench_function("new_request_id", |b| b.iter(new_request_id));
    group.finish();
}

criterion_group!(benches, encode, exchange);
criterion_main!(benches);
