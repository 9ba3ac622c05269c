//! Protocol detection on one plaintext listener: HTTP/1, HTTP/2 and opaque TCP (client-first and
//! server-speaks-first) all served correctly from the same port.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use meshguard_proxy::access_log::{ConnectionRecord, Direction};
use meshguard_proxy::detect::{DetectConfig, Ended, Protocol, sniff};
use meshguard_proxy::http::settings::HttpSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BANNER: &[u8] = b"220 legacy.bank.example ready\r\n";

/// An opaque upstream that speaks first (a banner, like SMTP), then echoes.
async fn start_banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                stream.write_all(BANNER).await.unwrap();
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A detect listener: HTTP goes to the sidecar pair's outbound proxy, opaque TCP to `opaque`.
/// With `eager`, the opaque upstream is dialed at accept and its first bytes end detection.
/// Each connection's verdict is sent on the returned channel.
async fn start_detect_listener(
    pair: &Pair,
    opaque: SocketAddr,
    mut config: DetectConfig,
    eager: bool,
    own_port_opaque: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<(Protocol, Ended)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if own_port_opaque {
        config.opaque_ports.push(addr.port());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let outbound = pair.outbound_http.clone();
    let stop = pair.stop.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, source)) = listener.accept().await else {
                return;
            };
            let (outbound, stop, tx, config) =
                (outbound.clone(), stop.clone(), tx.clone(), config.clone());
            tokio::spawn(async move {
                let mut upstream = if eager {
                    Some(TcpStream::connect(opaque).await.unwrap())
                } else {
                    None
                };
                let server_spoke = async {
                    match &upstream {
                        Some(up) => {
                            let _ = up.readable().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let (detection, mut prefixed) =
                    sniff(stream, &config, addr.port(), server_spoke).await;
                tx.send((detection.protocol, detection.ended)).unwrap();
                match detection.protocol {
                    Protocol::Http1 | Protocol::Http2 => {
                        let record =
                            ConnectionRecord::new(Direction::Outbound, "outbound:test", source);
                        let _ = outbound.serve(prefixed, record, stop).await;
                    }
                    Protocol::Opaque => {
                        let mut up = match upstream.take() {
                            Some(up) => up,
                            None => TcpStream::connect(opaque).await.unwrap(),
                        };
                        let _ = tokio::io::copy_bidirectional(&mut prefixed, &mut up).await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn http1_http2_and_opaque_on_one_listener() {
    let pair = start_pair(HttpSettings::default()).await;
    let opaque = start_banner_server().await;
    let config = DetectConfig {
        timeout: Duration::from_millis(300),
        opaque_ports: vec![],
    };
    let (addr, mut verdicts) = start_detect_listener(&pair, opaque, config, false, false).await;

    let mut h1 = h1_client(addr).await;
    let request = Request::get("/public/one")
        .header("host", "ledger")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h1.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Http1, Ended::Classified)
    );

    let mut h2 = h2_client(addr).await;
    let response = h2
        .send_request(
            Request::get("http://ledger/public/two")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-seen-version"], "HTTP/2.0");
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Http2, Ended::Classified)
    );

    // Client-first opaque bytes (a TLS ClientHello's first bytes) are decided on the first byte.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01binary").await.unwrap();
    assert_eq!(read_exactly(&mut tcp, BANNER.len()).await, BANNER);
    assert_eq!(read_exactly(&mut tcp, 9).await, b"\x16\x03\x01binary");
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Opaque, Ended::Classified)
    );

    // Server-speaks-first with a silent client: opaque at the detection timeout.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_exactly(&mut tcp, BANNER.len()).await, BANNER);
    tcp.write_all(b"EHLO client\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut tcp, 13).await, b"EHLO client\r\n");
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Opaque, Ended::Timeout)
    );
}

#[tokio::test]
async fn a_server_that_speaks_first_is_not_held_back_by_detection() {
    let pair = start_pair(HttpSettings::default()).await;
    let opaque = start_banner_server().await;
    // A detection timeout far longer than the read bound: only the server's first bytes can end
    // detection in time.
    let config = DetectConfig {
        timeout: Duration::from_secs(60),
        opaque_ports: vec![],
    };
    let (addr, mut verdicts) = start_detect_listener(&pair, opaque, config, true, false).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_exactly(&mut tcp, BANNER.len()).await, BANNER);
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Opaque, Ended::ServerSpoke)
    );
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let pair = start_pair(HttpSettings::default()).await;
    let opaque = start_banner_server().await;
    // The listener's own port is opaque: no detection wait, and even an HTTP request line is
    // forwarded as bytes.
    let config = DetectConfig {
        timeout: Duration::from_secs(60),
        opaque_ports: vec![],
    };
    let (addr, mut verdicts) = start_detect_listener(&pair, opaque, config, false, true).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_exactly(&mut tcp, BANNER.len()).await, BANNER);
    assert_eq!(
        verdicts.recv().await.unwrap(),
        (Protocol::Opaque, Ended::Classified)
    );
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut tcp, 18).await, b"GET / HTTP/1.1\r\n\r\n");
    assert!(pair.seen.paths().is_empty());
}
