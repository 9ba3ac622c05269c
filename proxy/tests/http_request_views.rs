//! Policy and the app see one request: one authority (target and `Host` must agree, and the app
//! gets the one authorized), and the headers as forwarded (no client-supplied XFCC, no hop-by-hop
//! headers). Each case is one a proxy that decided on the raw request would get wrong.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use hyper_util::rt::TokioExecutor;
use meshguard_proxy::http::settings::HttpSettings;

fn get(target: &str, host: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(target);
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// HTTP/1.1 straight to the inbound sidecar over mTLS: an absolute-form target names one host and
/// `Host` another. Only the rule for `reports.bank.example` allows `/reports/*`.
#[tokio::test]
async fn http1_target_and_host_must_agree_and_the_app_gets_the_authorized_one() {
    let pair = start_pair(HttpSettings::default()).await;
    let io = mtls_to_inbound(&pair, b"http/1.1").await;
    let (mut client, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);

    for (target, host, want, app_host) in [
        // Policy would match the target, the app would read Host.
        (
            "http://reports.bank.example/reports/q",
            Some("admin.bank.example"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "http://admin.bank.example/reports/q",
            Some("reports.bank.example"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        // The same host spelled differently is one host, forwarded canonical.
        (
            "http://Reports.Bank.Example.:80/reports/q",
            Some("reports.bank.example"),
            StatusCode::OK,
            Some("reports.bank.example"),
        ),
        (
            "/reports/q",
            Some("REPORTS.bank.example.:443"),
            StatusCode::OK,
            Some("reports.bank.example"),
        ),
        (
            "/reports/q",
            Some("admin.bank.example"),
            StatusCode::FORBIDDEN,
            None,
        ),
    ] {
        client.ready().await.unwrap();
        let response = client.send_request(get(target, host)).await.unwrap();
        assert_eq!(response.status(), want, "{target} host {host:?}");
        let seen = response
            .headers()
            .get("x-seen-host")
            .map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(seen.as_deref(), app_host, "{target} host {host:?}");
        let body = text(response).await;
        if want == StatusCode::BAD_REQUEST {
            assert!(body.contains("names two hosts"), "{body}");
        }
    }
    let lines = pair.inbound_lines.wait_requests("inbound", 5).await;
    assert_eq!(lines[2]["http"]["authority"], "reports.bank.example");
    assert_eq!(lines[2]["policy"], "frontend-reports");
    assert_eq!(
        pair.inbound_metrics
            .refused_total("inbound:test", "bad_authority"),
        2
    );
}

/// HTTP/2 straight to the inbound sidecar: `:authority` and a `host` header that disagree are a
/// malformed request (RFC 9113 §8.3.1).
#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let pair = start_pair(HttpSettings::default()).await;
    let io = mtls_to_inbound(&pair, b"h2").await;
    let (mut client, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);

    let smuggled = get(
        "https://reports.bank.example/reports/q",
        Some("admin.bank.example"),
    );
    let response = client.send_request(smuggled).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("x-seen-host").is_none());

    let agreed = get(
        "https://reports.bank.example:443/reports/q",
        Some("reports.bank.example"),
    );
    let response = client.send_request(agreed).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-seen-host"], "reports.bank.example");
}

/// The outbound sidecar sends the peer one authority: an app whose target and Host disagree is
/// refused there, before anything crosses the mesh.
#[tokio::test]
async fn the_outbound_sidecar_refuses_two_hosts_too() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = h1_client(pair.outbound).await;
    let response = client
        .send_request(get(
            "http://reports.bank.example/reports/q",
            Some("admin.bank.example"),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        pair.outbound_metrics
            .refused_total("outbound:test", "bad_authority"),
        1
    );
    assert!(pair.seen.paths().is_empty(), "{:?}", pair.seen.paths());
}

/// A client-supplied `x-forwarded-client-cert` naming the auditor: the app never sees it, so
/// policy must not either. A rule that reads XFCC sees the proxy's own, naming the real caller.
#[tokio::test]
async fn policy_sees_the_proxys_xfcc_not_the_clients() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = h1_client(pair.outbound).await;
    let mut request = get("/audit/trail", Some("ledger.bank.example"));
    request.headers_mut().insert(
        "x-forwarded-client-cert",
        "By=x;URI=spiffe://bank.example/ns/audit/sa/auditor"
            .parse()
            .unwrap(),
    );
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let lines = pair.inbound_lines.wait_requests("inbound", 1).await;
    assert_eq!(lines[0]["decision"], "deny");
    assert!(pair.seen.paths().is_empty(), "{:?}", pair.seen.paths());
}
