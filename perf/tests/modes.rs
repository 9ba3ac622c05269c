//! Every `meshguard perf` mode against the built-in upstream on 127.0.0.1:0, plaintext and mTLS
//! (SVIDs from identity's test CA), driven through the same argument parsing as the command line.
//! Short runs at low rates: these check that each mode completes without errors and reports what
//! it should, never how fast.

// Test helpers outside #[test] functions may unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use meshguard_identity::test_ca::{SvidFiles, TestCa};
use meshguard_perf::Command;
use meshguard_perf::measure;
use meshguard_perf::report::Report;
use meshguard_perf::tls::{self, TlsFiles};
use meshguard_perf::upstream::Upstream;

#[derive(Parser)]
struct Perf {
    #[command(subcommand)]
    command: Command,
}

async fn run(args: &[&str]) -> anyhow::Result<Report> {
    let argv = std::iter::once("perf").chain(args.iter().copied());
    match Perf::try_parse_from(argv)?.command {
        Command::Http(a) => measure::http(&a).await,
        Command::Handshake(a) => measure::handshake(&a).await,
        Command::Tcp(a) => measure::tcp(&a).await,
        Command::Upstream(_) | Command::Compare(_) | Command::Soak(_) => {
            unreachable!("not a load mode")
        }
    }
}

async fn upstream(tls: Option<&TlsFiles>) -> SocketAddr {
    let config = tls.map(|files| tls::server_config(files, &[b"h2", b"http/1.1"]).unwrap());
    let upstream = Upstream::bind("127.0.0.1:0".parse().unwrap(), config, 2)
        .await
        .unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(upstream.serve());
    addr
}

fn assert_clean(report: &Report, expected: u64) {
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.completed, expected, "{report}");
    assert!(report.latency_us.p50 > 0 && report.latency_us.max >= report.latency_us.p99);
}

struct Pki {
    _dir: tempfile::TempDir,
    server: SvidFiles,
    client: SvidFiles,
}

fn pki() -> Pki {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, path: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        ca.issue(path).write_to_dir(&sub, &ca.bundle_pem()).unwrap()
    };
    let server = write("server", "/ns/perf/upstream");
    let client = write("client", "/ns/perf/loadgen");
    Pki {
        _dir: dir,
        server,
        client,
    }
}

fn files(svid: &SvidFiles, expect: Option<&str>) -> TlsFiles {
    TlsFiles {
        cert: Some(svid.cert.clone()),
        key: Some(svid.key.clone()),
        bundle: Some(svid.bundle.clone()),
        expect_id: expect.map(str::to_owned),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_modes_complete_without_errors() {
    let addr = upstream(None).await;
    let url = format!("http://{addr}/");
    let target = addr.to_string();
    let load = ["--rate", "200", "--duration", "300ms", "--connections", "2"];

    let h1 = run(&[&["http", "--target", &url], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&h1, 60);
    assert_eq!(h1.extra["protocol"], "HTTP/1.1");
    assert_eq!(h1.target_rate, Some(200.0));

    let h2 = run(&[&["http", "--http2", "--target", &url], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&h2, 60);

    let ping = run(&[&["tcp", "--target", &target], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&ping, 60);

    let closed = run(&[
        "http",
        "--target",
        &url,
        "--rate",
        "max",
        "--duration",
        "200ms",
    ])
    .await
    .unwrap();
    assert!(closed.errors.is_empty() && closed.completed > 0, "{closed}");
    assert_eq!(closed.target_rate, None);

    let handshake = run(&[&["handshake", "--target", &target], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&handshake, 60);
    assert_eq!(handshake.extra["handshakes"], 60);

    let bulk = run(&[
        "tcp",
        "--bulk",
        "--target",
        &target,
        "--duration",
        "200ms",
        "--connections",
        "2",
    ])
    .await
    .unwrap();
    assert!(bulk.errors.is_empty(), "{bulk}");
    assert_eq!(bulk.completed, 2);
    assert!(bulk.extra["bytes"].as_u64().unwrap() > 0, "{bulk}");
    assert_eq!(bulk.extra["per_stream_mbit_s"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_modes_verify_the_server_identity() {
    let pki = pki();
    let addr = upstream(Some(&files(
        &pki.server,
        Some("spiffe://bank.example/ns/perf/*"),
    )))
    .await;
    let url = format!("https://{addr}/");
    let target = addr.to_string();
    let c = &pki.client;
    let tls = [
        "--cert",
        s(&c.cert),
        "--key",
        s(&c.key),
        "--bundle",
        s(&c.bundle),
        "--expect-id",
        "spiffe://bank.example/ns/perf/upstream",
    ];
    let load = ["--rate", "100", "--duration", "300ms", "--connections", "2"];

    let h1 = run(&[&["http", "--target", &url], &tls[..], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&h1, 30);
    let h2 = run(&[&["http", "--http2", "--target", &url], &tls[..], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&h2, 30);
    let ping = run(&[&["tcp", "--target", &target], &tls[..], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&ping, 30);

    let full = run(&[&["handshake", "--target", &target], &tls[..], &load[..]].concat())
        .await
        .unwrap();
    assert_clean(&full, 30);
    assert_eq!(full.extra["resumed_handshakes"], 0, "{full}");

    let resumed = run(&[
        &["handshake", "--resume", "--target", &target],
        &tls[..],
        &load[..],
    ]
    .concat())
    .await
    .unwrap();
    assert_clean(&resumed, 30);
    // Only the first handshake of each connection slot can be full: later ones use its tickets.
    assert!(
        resumed.extra["resumed_handshakes"].as_u64().unwrap() >= 28,
        "{resumed}"
    );

    let echo = run(&[
        &["handshake", "--echo", "--target", &target],
        &tls[..],
        &load[..],
    ]
    .concat())
    .await
    .unwrap();
    assert_clean(&echo, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_fails_every_handshake() {
    let pki = pki();
    let addr = upstream(Some(&files(&pki.server, None))).await;
    let c = &pki.client;
    let wrong = [
        "--cert",
        s(&c.cert),
        "--key",
        s(&c.key),
        "--bundle",
        s(&c.bundle),
        "--expect-id",
        "spiffe://bank.example/ns/payments/api",
    ];
    let url = format!("https://{addr}/");
    let err = run(&[
        &["http", "--target", &url, "--duration", "100ms"],
        &wrong[..],
    ]
    .concat())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("could not connect"), "{err:#}");

    let target = addr.to_string();
    let report = run(&[
        &[
            "handshake",
            "--target",
            &target,
            "--rate",
            "50",
            "--duration",
            "200ms",
        ],
        &wrong[..],
    ]
    .concat())
    .await
    .unwrap();
    assert_eq!(report.completed, 0);
    assert_eq!(report.errors["tls"], 10, "{report}");
}

/// The whole command as the binary runs it: its own runtime, the table printed, `--json` written.
#[test]
fn json_report_has_the_contract_keys() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let addr = server.block_on(upstream(None));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let url = format!("http://{addr}/");
    let argv = [
        "perf",
        "http",
        "--target",
        &url,
        "--rate",
        "100",
        "--duration",
        "200ms",
        "--threads",
        "1",
        "--json",
        s(&path),
    ];
    meshguard_perf::run(Perf::try_parse_from(argv).unwrap().command).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            json["latency_us"][key].as_u64().unwrap() > 0,
            "{key}: {json}"
        );
    }
    assert_eq!(json["target_rate"], 100.0);
    assert_eq!(json["completed"], 20);
    assert!(json["achieved_rate"].as_f64().unwrap() > 0.0);
    assert!(json["errors"].as_object().unwrap().is_empty());
}
