//! The shared test harness: a CA fixture, sidecars started in-process from real config text,
//! echo and HTTP upstreams, TLS clients presenting chosen certificates, and access-log readers.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the harness
#![allow(clippy::unwrap_used)] // test harness: a failed setup step should fail the test at once

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshguard_identity::test_ca::{BadSvid, IssuedSvid, SvidFiles, SvidSpec, TestCa};
use meshguard_identity::tls::dangerous::dangerous_client_config_presenting;
use meshguard_proxy::{Config, CredentialsInput, RunningProxy};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "bank.example";
pub const LEDGER: &str = "/ns/ledger/sa/ledger";
pub const PAYMENTS: &str = "/ns/payments/sa/payments";

pub fn id(path: &str) -> String {
    format!("spiffe://{TD}{path}")
}

/// A policy allowing `principal` (and nobody else: default deny).
pub fn allow_only(principal: &str) -> String {
    format!(
        "default = \"deny\"\n[[policy]]\nname = \"allow-{}\"\naction = \"allow\"\nprincipals = [\"{principal}\"]\n",
        principal.rsplit('/').next().unwrap_or("x")
    )
}

/// A temp directory with the CA's files for one workload.
pub struct Workload {
    pub dir: tempfile::TempDir,
    pub files: SvidFiles,
}

impl Workload {
    pub fn new(ca: &TestCa, path: &str) -> Self {
        Self::with_svid(ca, &ca.issue_with(&SvidSpec::new(path).dns("localhost")))
    }

    pub fn with_svid(ca: &TestCa, svid: &IssuedSvid) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = svid.write_to_dir(dir.path(), &ca.bundle_pem()).unwrap();
        Self { dir, files }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn access_log(&self) -> PathBuf {
        self.path("access.log")
    }

    /// The `[identity]`, `[admin]` and `[access_log]` part of a config for this workload.
    pub fn base_config(&self) -> String {
        format!(
            "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = \"access.log\"\n",
            self.files.cert.display(),
            self.files.key.display(),
            self.files.bundle.display()
        )
    }

    /// Writes `text` as `name` in the workload's directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Parses `extra` after the base config and starts the proxy from its files.
    pub async fn start(&self, extra: &str) -> RunningProxy {
        let text = format!("{}{extra}", self.base_config());
        let config = Config::parse(&text, &self.path("sidecar.toml")).unwrap();
        meshguard_proxy::start(config, CredentialsInput::FromConfig)
            .await
            .unwrap()
    }

    /// Starts the proxy with credentials the test rotates itself.
    pub async fn start_with(&self, extra: &str, credentials: CredentialsInput) -> RunningProxy {
        let text = format!("{}{extra}", self.base_config());
        let config = Config::parse(&text, &self.path("sidecar.toml")).unwrap();
        meshguard_proxy::start(config, credentials).await.unwrap()
    }

    /// Waits until the access log holds a line matching `pred` (lines are written off the data
    /// path, shortly after a connection ends).
    pub async fn wait_for_log(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for_line(&self.access_log(), pred).await
    }
}

/// Waits until the JSON-lines file at `path` holds a line matching `pred`.
pub async fn wait_for_line(
    path: &Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = read_log(path).into_iter().find(|l| pred(l)) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching line in {}; it holds:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An inbound listener section.
pub fn inbound(forward_to: SocketAddr, policy: &Path) -> String {
    format!(
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{forward_to}\"\npolicy = \"{}\"\n",
        policy.display()
    )
}

/// An outbound listener section.
pub fn outbound(target: SocketAddr, expect: &str) -> String {
    format!(
        "[[outbound]]\nlisten = \"127.0.0.1:0\"\ntarget = \"{target}\"\nexpect = [\"{expect}\"]\n"
    )
}

/// An echo server: every connection gets its bytes back, and EOF after the client's EOF.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A minimal HTTP/1 server: answers every request with `200 ok` and closes.
pub async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `payload` over a fresh connection, half-closes, and returns all bytes that came back.
pub async fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
    Ok(back)
}

/// A TLS client presenting `cert` (or none) to a meshguard inbound; the server is verified
/// against `ca`'s bundle. Returns what the server sent back for `payload` (or the error).
pub async fn tls_client_round_trip(
    addr: SocketAddr,
    ca: &TestCa,
    cert: Option<&IssuedSvid>,
    payload: &[u8],
) -> std::io::Result<Vec<u8>> {
    let config =
        dangerous_client_config_presenting(cert.map(IssuedSvid::cert_and_key), ca.bundle_set())
            .unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(payload).await?;
    tls.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
    Ok(back)
}

pub fn bad(ca: &TestCa, kind: BadSvid, path: &str) -> IssuedSvid {
    ca.issue_bad(kind, path)
}

/// A server-side sidecar (inbound to an upstream, policy allowing `allowed`) and a client-side
/// sidecar (outbound expecting `expect`), wired to each other.
pub struct Pair {
    pub ca: Arc<TestCa>,
    pub server: Workload,
    pub client: Workload,
    pub server_proxy: RunningProxy,
    pub client_proxy: RunningProxy,
}

impl Pair {
    pub async fn start(upstream: SocketAddr, allowed: &str, expect: &str) -> Self {
        let ca = Arc::new(TestCa::new(TD));
        Self::start_with(ca, LEDGER, upstream, allowed, expect, "").await
    }

    pub async fn start_with(
        ca: Arc<TestCa>,
        server_path: &str,
        upstream: SocketAddr,
        allowed: &str,
        expect: &str,
        extra: &str,
    ) -> Self {
        let server = Workload::new(&ca, server_path);
        let client = Workload::new(&ca, PAYMENTS);
        // Its own directory: the policy watcher should not see the access log's writes.
        let policy = server.write("policy/policy.toml", &allow_only(allowed));
        let server_proxy = server
            .start(&format!("{}{extra}", inbound(upstream, &policy)))
            .await;
        let client_proxy = client
            .start(&format!(
                "{}{extra}",
                outbound(server_proxy.inbound_addrs[0], expect)
            ))
            .await;
        Self {
            ca,
            server,
            client,
            server_proxy,
            client_proxy,
        }
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.client_proxy.outbound_addrs[0]
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.server_proxy.inbound_addrs[0]
    }
}
