//! Figures for the L4 proxy (not a test; no assertions on speed):
//! 1. bulk throughput of one TCP stream, direct vs. through a sidecar pair (outbound -> mTLS ->
//!    inbound), on loopback;
//! 2. RSS per idle mTLS connection, read from /proc for each sidecar process.
//!
//! The sidecars are real `meshguard proxy` processes. Build the binary first, then run:
//!
//! ```sh
//! cargo build -p meshguard                      # or --release, and pass its path below
//! cargo run -p meshguard-proxy --example l4_figures -- [MESHGUARD_BIN] [GIB] [IDLE]
//! ```
//! Defaults: `target/debug/meshguard`, 1 GiB, 2000 idle connections.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a measurement tool: failures should stop it

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::{SvidSpec, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..600 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never opened");
}

fn write_sidecar(ca: &TestCa, dir: &Path, id_path: &str, body: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let files = ca
        .issue_with(&SvidSpec::new(id_path))
        .write_to_dir(dir, &ca.bundle_pem())
        .unwrap();
    let config = format!(
        "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [access_log]\npath = \"access.log\"\n{body}",
        files.cert.display(),
        files.key.display(),
        files.bundle.display(),
        free_port()
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A server that discards what it reads and counts it (bulk sink), replying with nothing.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `bytes` and waits for the far end to close: the full transfer, timed.
async fn bulk(addr: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    sent as f64 / started.elapsed().as_secs_f64() / 1e6
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/debug/meshguard".to_owned());
    let gib: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let idle: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let bytes = (gib * 1024.0 * 1024.0 * 1024.0) as u64;

    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let upstream = sink().await;
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    std::fs::write(
        dir.path().join("policy.toml"),
        "default = \"allow-authenticated\"\n",
    )
    .unwrap();
    let (in_bulk, in_idle, out_bulk, out_idle) =
        (free_port(), free_port(), free_port(), free_port());
    let policy = dir.path().join("policy.toml");
    let server_cfg = write_sidecar(
        &ca,
        &dir.path().join("server"),
        "/ns/ledger/sa/ledger",
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:{in_bulk}\"\nforward_to = \"{upstream}\"\npolicy = \"{p}\"\n\
             [[inbound]]\nlisten = \"127.0.0.1:{in_idle}\"\nforward_to = \"{echo_addr}\"\npolicy = \"{p}\"\n",
            p = policy.display()
        ),
    );
    let expect = "expect = [\"spiffe://bank.example/ns/ledger/sa/ledger\"]";
    let client_cfg = write_sidecar(
        &ca,
        &dir.path().join("client"),
        "/ns/payments/sa/payments",
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:{out_bulk}\"\ntarget = \"127.0.0.1:{in_bulk}\"\n{expect}\n\
             [[outbound]]\nlisten = \"127.0.0.1:{out_idle}\"\ntarget = \"127.0.0.1:{in_idle}\"\n{expect}\n"
        ),
    );
    let spawn = |cfg: &Path| {
        Proc(
            Command::new(&bin)
                .args(["proxy", "--config"])
                .arg(cfg)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                )
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let server = spawn(&server_cfg);
    let client = spawn(&client_cfg);
    for port in [in_bulk, in_idle, out_bulk, out_idle] {
        wait_port(SocketAddr::from(([127, 0, 0, 1], port))).await;
    }

    // Throughput: interleave direct and proxied runs, three each.
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for _ in 0..3 {
        direct.push(bulk(upstream, bytes).await);
        proxied.push(bulk(SocketAddr::from(([127, 0, 0, 1], out_bulk)), bytes).await);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!("bulk throughput, one stream, {gib} GiB per run (best of 3):");
    println!("  direct:                {:>8.0} MB/s", best(&direct));
    println!(
        "  through sidecar pair:  {:>8.0} MB/s  ({:.0} % of direct)",
        best(&proxied),
        100.0 * best(&proxied) / best(&direct)
    );

    // Memory per idle mTLS connection.
    let (server_pid, client_pid) = (server.0.id(), client.0.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (rss_kib(server_pid), rss_kib(client_pid));
    let mut conns = Vec::with_capacity(idle);
    for _ in 0..idle {
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], out_idle)))
            .await
            .unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = (rss_kib(server_pid), rss_kib(client_pid));
    let per = |b: u64, a: u64| (a.saturating_sub(b)) as f64 * 1024.0 / idle as f64 / 1000.0;
    println!(
        "RSS per idle mTLS connection ({idle} connections, each proven with one echoed byte):"
    );
    println!(
        "  inbound sidecar (TLS server + plain upstream):  {:.1} KB   (RSS {} -> {} KiB)",
        per(before.0, after.0),
        before.0,
        after.0
    );
    println!(
        "  outbound sidecar (plain client + TLS client):   {:.1} KB   (RSS {} -> {} KiB)",
        per(before.1, after.1),
        before.1,
        after.1
    );
    println!(
        "  idle RSS before connections: inbound {} KiB, outbound {} KiB",
        before.0, before.1
    );
    drop(conns);
}
