//! The issuance API against clients that never authenticate: idle sockets, stalled handshakes,
//! half-sent headers, too many connections, too many signing requests. Each is bounded, and a
//! well-behaved client still gets through afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshguard_ca::Authority;
use meshguard_ca::serve::{Counters, Limits, Server};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Ca {
    addr: SocketAddr,
    counters: Counters,
    bundle: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(limits: Limits) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ca = Authority::init(
        &state,
        support::software_ca_options(dir.path()),
        SystemTime::now(),
    )
    .unwrap();
    let bundle = ca.bundle_pem();
    let server = Server::bind(ca, "127.0.0.1:0", &[])
        .await
        .unwrap()
        .with_limits(limits)
        .unwrap();
    let (addr, counters) = (server.local_addr(), server.counters());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ca {
        addr,
        counters,
        bundle,
        _dir: dir,
        _stop: stop,
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A TLS connection to the CA, verifying it by its bundle and the name `localhost`, no client
/// certificate (as a bootstrapping workload).
async fn tls(ca: &Ca) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls(ca)
        .await
        .expect("the TLS handshake with the CA succeeds")
}

async fn try_tls(ca: &Ca) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(ca.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// `POST /v1/sign` with a token that does not exist; returns the status line and headers.
async fn sign_with_a_bad_token(ca: &Ca) -> String {
    let mut stream = tls(ca).await;
    let body = r#"{"token":"not-a-token","csr":"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"}"#;
    let request = format!(
        "POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the CA answers within 10 s");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_handshake_timeout() {
    let ca = start(Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut idle = TcpStream::connect(ca.addr).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "a socket that never starts TLS must not hold a connection slot"
    );
    // Half a ClientHello is no better than none.
    let mut stalled = TcpStream::connect(ca.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_header_is_cut_off() {
    let ca = start(Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut slow = tls(&ca).await;
    slow.write_all(b"POST /v1/sign HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "slowloris: a header that never ends must not hold the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
    let ca = start(Limits {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(30),
        ..Limits::default()
    })
    .await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(ca.addr).await.unwrap(),
        TcpStream::connect(ca.addr).await.unwrap(),
    ];
    let mut third = TcpStream::connect(ca.addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(5)).await);
    assert!(ca.counters.over_limit() >= 1);
    drop(held);
    // Once the holders go, a real client gets a slot and an answer (bounded retry: the server
    // notices the closed sockets on its next read).
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_tls(&ca).await.is_err() {
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sign_with_a_bad_token(&ca).await.starts_with("HTTP/1.1 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_beyond_the_rate_gets_429_with_retry_after() {
    let ca = start(Limits {
        signing_rate: NonZeroU32::MIN,
        signing_burst: NonZeroU32::new(2).unwrap(),
        ..Limits::default()
    })
    .await;
    for _ in 0..2 {
        let response = sign_with_a_bad_token(&ca).await;
        assert!(response.starts_with("HTTP/1.1 4"), "{response}");
        assert!(!response.contains("rate_limited"), "{response}");
    }
    let response = sign_with_a_bad_token(&ca).await;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    assert!(response.contains("\"code\":\"rate_limited\""), "{response}");
    assert_eq!(ca.counters.rate_limited(), 1);
}
