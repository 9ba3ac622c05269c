//! The HTTP tests' harness: a sidecar pair assembled in-process from the HTTP proxy's parts (an
//! outbound that carries requests over HTTP/2 mTLS, an inbound that authorizes them), an app that
//! echoes what it saw, and an access log read back as JSON.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_identity::Credentials;
use meshguard_identity::test_ca::{SvidFiles, SvidSpec, TestCa};
use meshguard_identity::{ExpectedIdentities, RotatingCredentials, TlsProfile};
use meshguard_proxy::access_log::{AccessLog, ConnectionRecord, Direction};
use meshguard_proxy::authz::Authorizer;
use meshguard_proxy::balance::metrics::UpstreamMetrics;
use meshguard_proxy::config::{Target, UpstreamConfig};
use meshguard_proxy::http::exchange::Reporting;
use meshguard_proxy::http::inbound::{InboundHttp, PeerContext};
use meshguard_proxy::http::metrics::HttpMetrics;
use meshguard_proxy::http::outbound::{ALPN_H2, ALPN_HTTP1, OutboundHttp};
use meshguard_proxy::http::settings::HttpSettings;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub const TD: &str = "bank.example";
pub const FRONTEND: &str = "spiffe://bank.example/ns/web/sa/frontend";
pub const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/ledger";

/// Frontend may GET `/public/*`, `/reports/*` on host `reports.bank.example`, and call the gRPC
/// service `ledger.Ledger`; the auditor may read `/audit/*`; nothing else.
pub const POLICY: &str = r#"
default = "deny"

[[policy]]
name = "frontend-public"
action = "allow"
principals = ["spiffe://bank.example/ns/web/sa/frontend"]
methods = ["GET", "POST"]
paths = ["/public/*"]

[[policy]]
name = "frontend-grpc"
action = "allow"
principals = ["spiffe://bank.example/ns/web/sa/frontend"]
paths = ["/ledger.Ledger/Get"]

[[policy]]
name = "frontend-reports"
action = "allow"
principals = ["spiffe://bank.example/ns/web/sa/frontend"]
hosts = ["reports.bank.example"]
paths = ["/reports/*"]

# A rule that trusts XFCC to name the caller, as operators used to Envoy filters write: it must
# see the proxy's own XFCC, never the client's.
[[policy]]
name = "auditors-by-xfcc"
action = "allow"
paths = ["/audit/*"]
headers = { x-forwarded-client-cert = "*URI=spiffe://bank.example/ns/audit/sa/auditor" }

[[policy]]
name = "frontend-tunnel"
action = "allow"
principals = ["spiffe://bank.example/ns/web/sa/frontend"]
methods = ["CONNECT"]
"#;

/// Lines written to an access log, parsed.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<serde_json::Value>>>);

impl Lines {
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap().clone()
    }

    /// Request lines (those with an `http` object).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|l| !l["http"].is_null())
            .collect()
    }

    /// Waits (polling, bounded) until `n` request lines with the given direction are in.
    pub async fn wait_requests(&self, direction: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..500 {
            let lines: Vec<_> = self
                .requests()
                .into_iter()
                .filter(|l| l["direction"] == direction)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} {direction} request lines: {:#?}",
            self.all()
        );
    }
}

/// An access log whose lines are collected in memory.
pub fn access_log() -> (AccessLog, Lines) {
    let (sink, source) = tokio::io::duplex(1 << 20);
    let (log, _task) = AccessLog::with_writer(sink, 1024, Default::default());
    let lines = Lines::default();
    let collected = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(source).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            collected
                .0
                .lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    (log, lines)
}

/// The app: echoes what it saw in response headers; `/ledger.*` paths answer gRPC-style with
/// trailers; `/slow` waits a minute.
pub async fn start_app(seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let path = request
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    seen.0.lock().unwrap().push(path);
                    app(request)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn app(mut request: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    // Upgrade and CONNECT: agree, then echo the tunnel's bytes.
    if request.headers().contains_key("upgrade") || request.method() == http::Method::CONNECT {
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgraded.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let status = if request.method() == http::Method::CONNECT {
            200
        } else {
            101
        };
        let mut builder = Response::builder().status(status);
        if status == 101 {
            builder = builder
                .header("connection", "upgrade")
                .header("upgrade", "echo");
        }
        let xfcc = request
            .headers()
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        return Ok(builder
            .header("x-seen-xfcc", xfcc)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    let seen = |name: &str, h: &HeaderMap| {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let version = format!("{:?}", request.version());
    let xfcc = seen("x-forwarded-client-cert", request.headers());
    let host = seen("host", request.headers());
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let orig = seen("meshguard-orig-proto", request.headers());
    let grpc = request.uri().path().starts_with("/ledger.");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/public/slow" {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let builder = Response::builder()
        .header("x-seen-version", version)
        .header("x-seen-xfcc", xfcc)
        .header("x-seen-host", host)
        .header("x-seen-path", path)
        .header("x-seen-orig-proto", orig);
    if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let body = DataThenTrailers {
            data: Some(body),
            trailers: Some(trailers),
        };
        return Ok(builder
            .header("content-type", "application/grpc")
            .body(body.boxed())
            .unwrap());
    }
    Ok(builder
        .body(Full::new(Bytes::from(format!("echo:{}", body.len()))).boxed())
        .unwrap())
}

/// The paths the app received, in order.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<String>>>);

impl Seen {
    pub fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A body of one data frame then trailers, as a gRPC server sends.
struct DataThenTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for DataThenTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(data))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A running sidecar pair in front of the echo app.
pub struct Pair {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub app: SocketAddr,
    pub seen: Seen,
    pub inbound_lines: Lines,
    pub outbound_lines: Lines,
    pub inbound_metrics: HttpMetrics,
    pub outbound_metrics: HttpMetrics,
    pub stop: CancellationToken,
    pub ca: TestCa,
    /// The outbound HTTP proxy, for listeners a test assembles itself.
    pub outbound_http: OutboundHttp,
}

pub fn target(addr: SocketAddr) -> Target {
    addr.to_string().parse().unwrap()
}

/// Starts the app, an inbound sidecar (ledger) and an outbound sidecar (frontend).
pub async fn start_pair(settings: HttpSettings) -> Pair {
    let ca = TestCa::new(TD);
    // The ledger's SVID also names `localhost`, so curl can verify it by host name.
    let server_svid = ca
        .issue_with(&SvidSpec::new("/ns/ledger/sa/ledger").dns("localhost"))
        .to_svid()
        .unwrap();
    let server_creds =
        RotatingCredentials::new(Credentials::new(server_svid, ca.bundle_set())).unwrap();
    let client_creds = ca.rotating("/ns/web/sa/frontend");
    let seen = Seen::default();
    let app = start_app(seen.clone()).await;
    let settings = Arc::new(settings);
    let stop = CancellationToken::new();

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let authorizer = Authorizer::load(&policy).unwrap();
    std::mem::forget(dir); // the policy file outlives the test's body

    let (inbound_log, inbound_lines) = access_log();
    let inbound_metrics = HttpMetrics::default();
    let inbound_addr = start_inbound(
        server_creds,
        InboundHttp::new(
            &UpstreamConfig::single(target(app)),
            &UpstreamMetrics::default(),
            authorizer,
            None,
            settings.clone(),
            Reporting {
                listener: "inbound:test".into(),
                access_log: inbound_log,
                metrics: inbound_metrics.clone(),
            },
            Duration::from_secs(5),
        )
        .await,
        stop.clone(),
    )
    .await;

    let (outbound_log, outbound_lines) = access_log();
    let outbound_metrics = HttpMetrics::default();
    let client = TlsProfile::new(client_creds)
        .expect(ExpectedIdentities::parse(&[LEDGER]).unwrap())
        .client_config()
        .unwrap();
    let outbound = OutboundHttp::new(
        &UpstreamConfig::single(target(inbound_addr)),
        &UpstreamMetrics::default(),
        Some("localhost".into()),
        &client,
        settings,
        Reporting {
            listener: "outbound:test".into(),
            access_log: outbound_log,
            metrics: outbound_metrics.clone(),
        },
        (Duration::from_secs(5), Duration::from_secs(5)),
    )
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound_addr = listener.local_addr().unwrap();
    let outbound_stop = stop.clone();
    let outbound_http = outbound.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, source)) = listener.accept().await else {
                return;
            };
            let outbound = outbound.clone();
            let stop = outbound_stop.clone();
            tokio::spawn(async move {
                let record = ConnectionRecord::new(Direction::Outbound, "outbound:test", source);
                outbound.serve(stream, record, stop).await
            });
        }
    });
    Pair {
        outbound: outbound_addr,
        inbound: inbound_addr,
        app,
        seen,
        inbound_lines,
        outbound_lines,
        inbound_metrics,
        outbound_metrics,
        stop,
        ca,
        outbound_http,
    }
}

/// An inbound mTLS listener serving HTTP with `inbound`.
pub async fn start_inbound(
    creds: RotatingCredentials,
    inbound: InboundHttp,
    stop: CancellationToken,
) -> SocketAddr {
    let server = TlsProfile::new(creds.clone())
        .with_alpn([ALPN_H2, ALPN_HTTP1])
        .server_config()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let local_id = creds.current().svid.spiffe_id().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, source)) = listener.accept().await else {
                return;
            };
            let (inbound, server, stop, local_id) = (
                inbound.clone(),
                server.clone(),
                stop.clone(),
                local_id.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = TlsAcceptor::from(server).accept(stream).await else {
                    return;
                };
                let peer_id = meshguard_identity::peer_spiffe_id(tls.get_ref().1)
                    .ok()
                    .map(|id| id.to_string());
                let mut record = ConnectionRecord::new(Direction::Inbound, "inbound:test", source);
                record.peer_id = peer_id.clone();
                record.local_id = Some(local_id.clone());
                let peer = PeerContext {
                    peer_id,
                    local_id,
                    source,
                    port: addr.port(),
                    sni: None,
                    record,
                };
                let _ = inbound.serve(tls, peer, stop).await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 client connection (keep-alive) to `addr`.
pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 prior-knowledge client connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// An mTLS connection to the inbound sidecar as `frontend`, speaking `alpn`.
pub async fn mtls_to_inbound(
    pair: &Pair,
    alpn: &[u8],
) -> TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = TlsProfile::new(pair.ca.rotating("/ns/web/sa/frontend"))
        .expect(ExpectedIdentities::parse(&[LEDGER]).unwrap())
        .with_alpn([alpn])
        .client_config()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(pair.inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    TokioIo::new(tls)
}

/// Body as text.
pub async fn text(response: Response<Incoming>) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// Writes a client SVID for `path` (cert, key, bundle) into a temp dir for curl.
pub fn client_files(ca: &TestCa, path: &str) -> (tempfile::TempDir, SvidFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = ca
        .issue(path)
        .write_to_dir(dir.path(), &ca.bundle_pem())
        .unwrap();
    (dir, files)
}

/// Runs a command to completion off the runtime's threads; returns (success, stdout + stderr).
pub async fn run(program: &str, args: Vec<String>) -> (bool, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}
