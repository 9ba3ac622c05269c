//! Upstream resilience with every part a real process on loopback: app replicas (`meshguard perf
//! upstream`), the two sidecars (`meshguard proxy`, mTLS between them), and the clients (`meshguard
//! perf http` open or closed loop, curl). One replica is SIGKILLed mid-run as a crashed pod is and
//! started again, one is 20 ms slower, one breaks requests after reading them, all are dead.
#![allow(clippy::unwrap_used)] // test code: a failed setup step should fail the test at once

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::TestCa;

mod support;

use support::{Proc, wait_for_log_line, write_identity};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const TD: &str = "bank.example";
/// The inbound listener's name: the `listener` label of its metrics.
const LISTENER: &str = "ledger";

/// A loopback port nothing listens on right now (bound, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (at most 30 s) until `addr` accepts a TCP connection.
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `meshguard perf upstream` on `addr`, answering every request after `delay` (`None`: at once).
fn replica(addr: SocketAddr, delay: Option<&str>) -> Proc {
    let mut command = Command::new(BIN);
    command.args(["perf", "upstream", "--threads", "1", "--listen"]);
    command.arg(addr.to_string());
    if let Some(delay) = delay {
        command.args(["--response-delay", delay]);
    }
    let child = command.stdout(Stdio::null()).spawn().unwrap();
    wait_listening(addr, "a replica");
    Proc(child)
}

/// A replica that reads what a request sends, then closes without answering: the request
/// reached it. Counts the requests it swallowed.
fn breaking_replica() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 8192];
            if stream.read(&mut buf).is_ok_and(|n| n > 0) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, seen)
}

/// The two sidecars: payments' outbound -> mTLS -> ledger's inbound -> `endpoints`.
struct Mesh {
    /// Where the app sends plaintext HTTP.
    outbound: SocketAddr,
    inbound_admin: SocketAddr,
    /// The inbound's JSON access log.
    server_log: PathBuf,
    _sidecars: [Proc; 2],
    dir: tempfile::TempDir,
}

impl Mesh {
    /// `upstream` is added inside the inbound's `upstream = { endpoints = [...] ... }` table.
    fn start(endpoints: &[SocketAddr], upstream: &str) -> Mesh {
        let ca = TestCa::new(TD);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let (inbound, inbound_admin, outbound) = (free_port(), free_port(), free_port());
        std::fs::write(
            path.join("policy.toml"),
            format!(
                "[[policy]]\nname = \"payments\"\naction = \"allow\"\n\
                 principals = [\"spiffe://{TD}/ns/payments/sa/payments\"]\n"
            ),
        )
        .unwrap();
        let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        let server_log = path.join("inbound-access.log");
        let config = format!(
            "{}[admin]\nlisten = \"{inbound_admin}\"\n[access_log]\npath = \"{}\"\n\
             [[inbound]]\nname = \"{LISTENER}\"\nlisten = \"{inbound}\"\nprotocol = \"http\"\n\
             policy = \"{}\"\nupstream = {{ endpoints = [{}]{upstream} }}\n",
            write_identity(&ca, path, "/ns/ledger/sa/ledger"),
            server_log.display(),
            path.join("policy.toml").display(),
            list.join(", ")
        );
        let server = sidecar(path, "sidecar-in", &config, &[inbound, inbound_admin]);
        let config = format!(
            "{}[admin]\nlisten = \"{}\"\n\
             [[outbound]]\nname = \"to-ledger\"\nlisten = \"{outbound}\"\nprotocol = \"http\"\n\
             target = \"{inbound}\"\nexpect = [\"spiffe://{TD}/ns/ledger/sa/ledger\"]\n",
            write_identity(&ca, path, "/ns/payments/sa/payments"),
            free_port()
        );
        let client = sidecar(path, "sidecar-out", &config, &[outbound]);
        Mesh {
            outbound,
            inbound_admin,
            server_log,
            _sidecars: [server, client],
            dir,
        }
    }

    /// The inbound's metric `meshguard_upstream_<name>` for `endpoint`.
    fn endpoint_metric(&self, name: &str, endpoint: SocketAddr) -> f64 {
        metric(
            self.inbound_admin,
            &format!(
                "meshguard_upstream_{name}{{listener=\"{LISTENER}\",endpoint=\"{endpoint}\"}}"
            ),
        )
    }

    /// `meshguard perf http` through the mesh: `rate` per second (or `max`) for `duration` on
    /// `connections`; returns its JSON report once it is done.
    fn load(&self, rate: &str, duration: &str, connections: u16) -> Proc {
        let report = self.dir.path().join("load.json");
        let _ = std::fs::remove_file(&report);
        let child = Command::new(BIN)
            .args(["perf", "http", "--target"])
            .arg(format!("http://{}/ledger", self.outbound))
            .args(["--rate", rate, "--duration", duration])
            .args(["--connections", &connections.to_string(), "--json"])
            .arg(&report)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Waits for a load started by [`Mesh::load`] and reads its report. `perf http` exits
    /// non-zero when every request failed; the report is written all the same.
    fn report(&self, mut load: Proc) -> serde_json::Value {
        load.0.wait().unwrap();
        let text = std::fs::read_to_string(self.dir.path().join("load.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// One request with curl (a new connection each time); returns the status code.
    fn curl(&self, method: &str, path: &str) -> u16 {
        let mut command = Command::new("curl");
        command.args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]);
        if method == "POST" {
            command.args(["-H", "content-type: application/json"]);
            command.args(["--data", "{\"amount\":100}"]);
        }
        let output = command
            .arg(format!("http://{}{path}", self.outbound))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).parse().unwrap()
    }
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
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let mut replicas: Vec<Option<Proc>> = addrs.iter().map(|&a| Some(replica(a, None))).collect();
    // A short first ejection, so the restarted replica is probed within the run.
    let mesh = Mesh::start(&addrs, ", ejection_min = \"500ms\"");

    // 10,000 GETs at 1,000/s, open loop (latency from each request's intended send time).
    let load = mesh.load("1000", "10s", 16);
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
    replicas[0] = Some(replica(addrs[0], None));
    let served_at_restart = mesh.endpoint_metric("requests_total", addrs[0]);
    let report = mesh.report(load);

    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "requests failed while a replica was killed: {report}"
    );
    assert_eq!(report["completed"], 10_000, "{report}");
    assert!(
        mesh.endpoint_metric("ejections_total", addrs[0]) >= 1.0,
        "the killed replica was never ejected"
    );
    let served_after = mesh.endpoint_metric("requests_total", addrs[0]);
    assert!(
        served_after > served_at_restart,
        "the restarted replica took no request in the 4 s after it came back \
         ({served_at_restart} before, {served_after} after)"
    );
    assert_eq!(
        mesh.endpoint_metric("endpoint_state", addrs[0]),
        0.0,
        "the restarted replica is not back in rotation"
    );
}

#[test]
fn a_replica_20ms_slower_gets_under_15_percent_after_warm_up() {
    let addrs = [free_port(), free_port(), free_port()];
    let _replicas = [
        replica(addrs[0], None),
        replica(addrs[1], None),
        replica(addrs[2], Some("20ms")),
    ];
    let mesh = Mesh::start(&addrs, "");
    // Warm-up: every replica gets measured.
    let warm_up = mesh.report(mesh.load("max", "1s", 8));
    assert_eq!(warm_up["errors"], serde_json::json!({}), "{warm_up}");
    let served = || addrs.map(|a| mesh.endpoint_metric("requests_total", a));
    let before = served();
    let run = mesh.report(mesh.load("max", "3s", 8));
    assert_eq!(run["errors"], serde_json::json!({}), "{run}");
    let after = served();
    let delta: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: f64 = delta.iter().sum();
    assert!(total > 100.0, "too few requests to judge: {delta:?}");
    assert!(
        delta[2] < 0.15 * total,
        "the slow replica got {} of {total} ({delta:?})",
        delta[2]
    );
}

#[test]
fn a_post_that_reached_a_failing_replica_is_not_retried_but_a_get_is() {
    let (bad, bad_seen) = breaking_replica();
    let good = free_port();
    let _good = replica(good, None);
    let mesh = Mesh::start(&[bad, good], ", balancer = \"round-robin\"");

    let statuses: Vec<u16> = (0..4).map(|_| mesh.curl("POST", "/transfer")).collect();
    let count = |code| statuses.iter().filter(|s| **s == code).count();
    assert_eq!((count(502), count(200)), (2, 2), "{statuses:?}");
    let line = wait_for_log_line(&mesh.server_log, &|l| {
        l["http"]["method"] == "POST" && l["http"]["status"] == 502
    });
    assert_eq!(line["attempts"], 1, "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("not idempotent"),
        "{line}"
    );

    // A GET that meets the breaking replica is sent to the other one.
    let seen_before = bad_seen.load(Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(mesh.curl("GET", "/ledger"), 200);
    }
    assert!(
        bad_seen.load(Ordering::Relaxed) > seen_before,
        "round robin sent no GET to the breaking replica"
    );
    let retried = wait_for_log_line(&mesh.server_log, &|l| {
        l["http"]["method"] == "GET" && l["attempts"] == 2
    });
    assert_eq!(retried["upstream"], good.to_string(), "{retried}");
}

#[test]
fn a_retry_storm_against_dead_replicas_is_capped_by_the_budget() {
    let dead: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let mesh = Mesh::start(&dead, "");
    // 500 GETs at 250/s: every one gets 502 from the inbound.
    let report = mesh.report(mesh.load("250", "2s", 4));
    assert_eq!(report["errors"]["http_5xx"], 500, "{report}");

    let attempts: f64 = dead
        .iter()
        .map(|&d| mesh.endpoint_metric("requests_total", d))
        .sum();
    let exhausted = metric(
        mesh.inbound_admin,
        &format!(
            "meshguard_upstream_retries_total{{listener=\"{LISTENER}\",outcome=\"budget_exhausted\"}}"
        ),
    );
    // Without a budget, 3 attempts each: 1,500. The budget allows 20 % of requests plus a
    // reserve of 10/s over its 10 s window.
    let cap = 500.0 * 1.2 + 100.0;
    assert!(
        (500.0..=cap).contains(&attempts),
        "{attempts} attempts for 500 requests"
    );
    assert!(exhausted > 0.0, "the budget never refused a retry");
}
