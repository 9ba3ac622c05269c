//! HTTP/1.1 Upgrade and CONNECT through the sidecar pair: authorized like any request, then an
//! opaque byte stream end to end.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use hyper_util::rt::TokioIo;
use meshguard_proxy::http::settings::HttpSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tunnel_echo(response: http::Response<hyper::body::Incoming>) {
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
}

async fn upgrade_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

#[tokio::test]
async fn websocket_style_upgrade_passes_through() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = upgrade_client(pair.outbound).await;
    let request = Request::get("/public/ws")
        .header("host", "ledger")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .header("x-forwarded-client-cert", "URI=spiffe://evil")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers()["x-seen-xfcc"],
        format!("By={LEDGER};URI={FRONTEND}").as_str()
    );
    tunnel_echo(response).await;
    let lines = pair.inbound_lines.wait_requests("inbound", 1).await;
    assert_eq!(lines[0]["http"]["status"], 101);
    assert_eq!(lines[0]["decision"], "allow");
}

#[tokio::test]
async fn a_denied_upgrade_gets_403_and_no_tunnel() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = upgrade_client(pair.outbound).await;
    let request = Request::get("/admin/ws")
        .header("host", "ledger")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(pair.seen.paths().is_empty());
}

#[tokio::test]
async fn connect_tunnels_pass_through() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = upgrade_client(pair.outbound).await;
    let request = Request::connect("ledger.bank.example:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tunnel_echo(response).await;
    let lines = pair.inbound_lines.wait_requests("inbound", 1).await;
    assert_eq!(lines[0]["http"]["method"], "CONNECT");
    assert_eq!(lines[0]["policy"], "frontend-tunnel");
}
