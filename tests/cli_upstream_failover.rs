//! Upstream failover with every part a real process on loopback: three app replicas (`meshguard
//! perf upstream`), the two sidecars (`meshguard proxy`, mTLS between them), and the load
//! generator (`meshguard perf http`, open loop). One replica is SIGKILLed mid-run, as a crashed
//! pod is, and started again on its port; no request may fail, the dead replica must be ejected,
//! and it must take traffic again once it is back.
#![allow(clippy::unwrap_used)] // test code: a failed setup step should fail the test at once

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::{SvidSpec, TestCa};

mod support;

use support::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const TD: &str = "bank.example";

/// A loopback port nothing listens on right now (bound, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn identity(ca: &TestCa, dir: &Path, path: &str) -> String {
    let svid = ca.issue_with(&SvidSpec::new(path));
    let files = svid.write_to_dir(dir, &ca.bundle_pem()).unwrap();
    format!(
        "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n",
        files.cert.display(),
        files.key.display(),
        files.bundle.display()
    )
}

/// Waits (at most 30 s) until `addr` accepts a TCP connection.
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replica(addr: SocketAddr) -> Proc {
    let child = Command::new(BIN)
        .args(["perf", "upstream", "--threads", "1", "--listen"])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(addr, "a replica");
    Proc(child)
}

fn sidecar(dir: &Path, name: &str, config: &str, listeners: &[SocketAddr]) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for &addr in listeners {
        wait_listening(addr, name);
    }
    Proc(child)
}

/// The sum of the Prometheus samples on `admin`'s /metrics whose line starts with `prefix`.
fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_replica_killed_and_restarted_under_load_fails_no_request() {
    let ca = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let mut replicas: Vec<Option<Proc>> = addrs.iter().map(|&a| Some(replica(a))).collect();

    let (inbound, inbound_admin, outbound) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "[[policy]]\nname = \"payments\"\naction = \"allow\"\nprincipals = [\"spiffe://{TD}/ns/payments/sa/payments\"]\n"
        ),
    )
    .unwrap();
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    // A short first ejection, so the restarted replica is probed within the run.
    let config = format!(
        "{}[admin]\nlisten = \"{inbound_admin}\"\n\
         [[inbound]]\nname = \"ledger\"\nlisten = \"{inbound}\"\nprotocol = \"http\"\n\
         policy = \"{}\"\nupstream = {{ endpoints = [{}], ejection_min = \"500ms\" }}\n",
        identity(&ca, dir, "/ns/ledger/sa/ledger"),
        dir.join("policy.toml").display(),
        endpoints.join(", ")
    );
    let _server = sidecar(dir, "sidecar-in", &config, &[inbound, inbound_admin]);
    let config = format!(
        "{}[admin]\nlisten = \"{}\"\n\
         [[outbound]]\nname = \"to-ledger\"\nlisten = \"{outbound}\"\nprotocol = \"http\"\n\
         target = \"{inbound}\"\nexpect = [\"spiffe://{TD}/ns/ledger/sa/ledger\"]\n",
        identity(&ca, dir, "/ns/payments/sa/payments"),
        free_port()
    );
    let _client = sidecar(dir, "sidecar-out", &config, &[outbound]);

    // 10,000 GETs at 1,000/s, open loop (latency from each request's intended send time).
    let report = dir.join("load.json");
    let mut load = Proc(
        Command::new(BIN)
            .args(["perf", "http", "--target"])
            .arg(format!("http://{outbound}/ledger"))
            .args(["--rate", "1000", "--duration", "10s", "--connections", "16"])
            .arg("--json")
            .arg(&report)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let at = |seconds: u64| {
        let due = started + Duration::from_secs(seconds);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    };
    at(3);
    let mut killed = replicas[0].take().unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    at(6);
    replicas[0] = Some(replica(addrs[0]));
    let label = |name: &str| {
        format!(
            "meshguard_upstream_{name}{{listener=\"ledger\",endpoint=\"{}\"}}",
            addrs[0]
        )
    };
    let served_at_restart = metric(inbound_admin, &label("requests_total"));
    let status = load.0.wait().unwrap();
    assert!(status.success(), "perf http exited with {status}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let completed = report["completed"].as_u64().unwrap();
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "requests failed while a replica was killed: {report}"
    );
    assert_eq!(completed, 10_000, "{report}");

    assert!(
        metric(inbound_admin, &label("ejections_total")) >= 1.0,
        "the killed replica was never ejected"
    );
    let served_after = metric(inbound_admin, &label("requests_total"));
    assert!(
        served_after > served_at_restart,
        "the restarted replica took no request in the 4 s after it came back \
         ({served_at_restart} before, {served_after} after)"
    );
    assert_eq!(
        metric(inbound_admin, &label("endpoint_state")),
        0.0,
        "the restarted replica is not back in rotation"
    );
}
