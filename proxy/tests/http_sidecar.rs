//! HTTP/1.1, HTTP/2 and gRPC through a sidecar pair: per-request authorization, XFCC, the
//! original version restored at the app, trailers end to end, and one access-log line per request.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use http_support::*;
use meshguard_proxy::http::settings::HttpSettings;

#[tokio::test]
async fn http1_allowed_and_denied_on_one_keep_alive_connection() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = h1_client(pair.outbound).await;

    for (path, want) in [
        ("/public/a", StatusCode::OK),
        ("/admin", StatusCode::FORBIDDEN),
        ("/public/../admin", StatusCode::FORBIDDEN),
        ("/public/%2e%2e/admin", StatusCode::BAD_REQUEST),
        ("/public/b", StatusCode::OK),
    ] {
        client.ready().await.unwrap();
        let request = Request::get(path)
            .header("host", "ledger.bank.example")
            // A spoofed identity header: the app must never see it.
            .header(
                "x-forwarded-client-cert",
                "By=x;URI=spiffe://bank.example/ns/admin/sa/root",
            )
            .header("user-agent", "h7-test")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), want, "{path}");
        let headers = response.headers().clone();
        let body = text(response).await;
        match want {
            StatusCode::OK => {
                assert_eq!(
                    headers["x-seen-version"], "HTTP/1.1",
                    "the app gets the client's version back"
                );
                assert_eq!(
                    headers["x-seen-xfcc"],
                    format!("By={LEDGER};URI={FRONTEND}").as_str()
                );
                assert_eq!(headers["x-seen-host"], "ledger.bank.example");
                assert_eq!(
                    headers["x-seen-orig-proto"], "",
                    "the marker never reaches the app"
                );
                assert_eq!(headers["x-seen-path"], path);
            }
            StatusCode::FORBIDDEN => {
                let id = headers["x-request-id"].to_str().unwrap();
                assert!(
                    body.contains(id) && body.contains("denied by policy"),
                    "{body}"
                );
            }
            _ => assert!(body.contains("dot segment"), "{body}"),
        }
    }

    let lines = pair.inbound_lines.wait_requests("inbound", 5).await;
    let statuses: Vec<_> = lines
        .iter()
        .map(|l| l["http"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 403, 403, 400, 200]);
    let allowed = &lines[0];
    assert_eq!(allowed["peer_id"], FRONTEND);
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["policy"], "frontend-public");
    assert_eq!(allowed["http"]["method"], "GET");
    assert_eq!(allowed["http"]["path"], "/public/a");
    assert_eq!(
        allowed["http"]["version"], "HTTP/2.0",
        "between sidecars the request is HTTP/2"
    );
    assert_eq!(
        allowed["http"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(allowed["http"]["user_agent"], "h7-test");
    assert!(allowed["http"]["upstream_ms"].is_f64());
    let denied = &lines[2];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(
        denied["http"]["path"], "/admin",
        "the normalized path is what was decided"
    );
    assert_eq!(denied["error_class"], "policy");
    // The same request id at both sidecars.
    let out = pair.outbound_lines.wait_requests("outbound", 5).await;
    assert_eq!(out[2]["http"]["request_id"], denied["http"]["request_id"]);
    assert_eq!(out[2]["http"]["version"], "HTTP/1.1");
    // The outbound lines name the peer sidecar and the mTLS it was reached over, as L4 lines do.
    for line in &out {
        assert_eq!(line["peer_id"], LEDGER, "{line}");
        assert_eq!(line["tls_version"], "TLSv1_3", "{line}");
        assert_eq!(line["kx_group"], "X25519MLKEM768", "{line}");
        assert_eq!(line["alpn"], "h2", "{line}");
    }
    assert_eq!(
        pair.inbound_metrics
            .requests_total("inbound:test", "4xx", "deny"),
        2
    );
    assert_eq!(
        pair.inbound_metrics
            .requests_total("inbound:test", "2xx", "allow"),
        2
    );
    assert_eq!(
        pair.inbound_metrics
            .refused_total("inbound:test", "bad_path"),
        1
    );
}

#[tokio::test]
async fn http2_end_to_end_and_grpc_with_trailers() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = h2_client(pair.outbound).await;

    let request = Request::get("http://ledger/public/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(
        response.headers()["x-seen-version"],
        "HTTP/2.0",
        "HTTP/2 stays HTTP/2 to the app"
    );
    assert_eq!(
        response.headers()["x-seen-xfcc"],
        format!("By={LEDGER};URI={FRONTEND}").as_str()
    );

    // gRPC-like: a unary call whose status travels in trailers.
    let request = Request::post("http://ledger/ledger.Ledger/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x02hi")))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers arrive end to end");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");

    // A denied gRPC call: PERMISSION_DENIED, trailers-only.
    let request = Request::post("http://ledger/ledger.Ledger/Delete")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "7");
    assert!(
        response.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("denied by policy")
    );

    // Many concurrent streams from several clients share one connection between the sidecars.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = h2_client(pair.outbound).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let request = Request::get("http://ledger/public/many")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(
                    client.send_request(request).await.unwrap().status(),
                    StatusCode::OK
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let lines = pair.inbound_lines.wait_requests("inbound", 43).await;
    let sources: std::collections::BTreeSet<_> = lines
        .iter()
        .map(|l| l["source_addr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sources.len(),
        1,
        "one pooled connection between the sidecars: {sources:?}"
    );
    let grpc = lines
        .iter()
        .find(|l| l["http"]["path"] == "/ledger.Ledger/Delete")
        .unwrap();
    assert_eq!(grpc["http"]["grpc_status"], "7");
    assert_eq!(grpc["decision"], "deny");
}

/// The zero-trust default: a caller learns it was denied and the request id, not which rule to
/// dodge; the reason is in the access log under that id.
#[tokio::test]
async fn denial_reasons_are_hidden_by_default_and_kept_in_the_log() {
    for (settings, shown) in [
        (HttpSettings::default(), false),
        (
            HttpSettings {
                detail: meshguard_proxy::http::respond::Detail::Show,
                ..HttpSettings::default()
            },
            true,
        ),
    ] {
        let pair = start_pair(settings).await;
        let mut client = h1_client(pair.outbound).await;
        let request = Request::get("/admin")
            .header("host", "ledger")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = text(response).await;
        assert!(
            body.contains(&id) && body.contains("denied by policy"),
            "{body}"
        );
        assert_eq!(body.contains("no allow policy"), shown, "{body}");
        let lines = pair.inbound_lines.wait_requests("inbound", 1).await;
        assert_eq!(lines[0]["http"]["request_id"], id.as_str());
        assert!(
            lines[0]["reason"]
                .as_str()
                .unwrap()
                .contains("no allow policy"),
            "the log keeps the reason"
        );
    }
}

#[tokio::test]
async fn a_slow_app_gets_504_within_the_request_timeout() {
    let settings = HttpSettings {
        request_timeout: std::time::Duration::from_millis(300),
        ..HttpSettings::default()
    };
    let pair = start_pair(settings).await;
    let mut client = h1_client(pair.outbound).await;
    let request = Request::get("/public/slow")
        .header("host", "ledger")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let out = pair.outbound_lines.wait_requests("outbound", 1).await;
    assert_eq!(out[0]["error_class"], "upstream");
    assert_eq!(out[0]["http"]["status"], 504);
    // The inbound sidecar logs the request too, whichever side's timer fired first.
    let lines = pair.inbound_lines.wait_requests("inbound", 1).await;
    assert!(
        lines[0]["error_class"] == "upstream" || lines[0]["error_class"] == "downstream",
        "{}",
        lines[0]
    );
    // The connection is still good for the next request.
    client.ready().await.unwrap();
    let request = Request::get("/public/ok")
        .header("host", "ledger")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );
}

/// A Java server cuts a segment at `;`, so `/public/..;/admin` is `/admin` to it while a path
/// pattern sees `/public/...`. The proxy has one definition of a segment: it refuses the request
/// before policy, and the app never sees it.
#[tokio::test]
async fn matrix_parameters_are_refused_before_policy_and_never_reach_the_app() {
    let pair = start_pair(HttpSettings::default()).await;
    let mut client = h1_client(pair.outbound).await;
    let refused = [
        "/public/..;/admin",
        "/admin;jsessionid=1",
        "/public/%3B/a",
        "/public/%252Fa",
    ];
    for path in refused {
        client.ready().await.unwrap();
        let request = Request::get(path)
            .header("host", "ledger.bank.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(response.headers().get("x-seen-path").is_none(), "{path}");
    }
    let lines = pair
        .inbound_lines
        .wait_requests("inbound", refused.len())
        .await;
    assert!(
        lines.iter().all(|l| l["http"]["status"] == 400),
        "{lines:?}"
    );
    assert_eq!(
        pair.inbound_metrics
            .refused_total("inbound:test", "bad_path"),
        refused.len() as u64
    );
}
