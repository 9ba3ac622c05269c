//! Real clients through the sidecars: curl over HTTP/1.1 and HTTP/2 (prior knowledge) in
//! plaintext to the outbound sidecar, curl with a client certificate straight to the inbound
//! sidecar (ALPN h2 and http/1.1), and h2load for load over both protocols.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;
mod tools;

use http_support::*;
use meshguard_proxy::http::settings::HttpSettings;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[tokio::test]
async fn curl_http1_and_http2_through_the_outbound_sidecar() {
    if !tools::require(
        "curl_http1_and_http2_through_the_outbound_sidecar",
        &["curl"],
    ) {
        return;
    }
    let pair = start_pair(HttpSettings::default()).await;
    let base = format!("http://{}", pair.outbound);
    for (flag, version) in [
        ("--http1.1", "HTTP/1.1"),
        ("--http2-prior-knowledge", "HTTP/2.0"),
    ] {
        let url = format!("{base}/public/curl");
        let (ok, out) = run(
            "curl",
            s(&[
                "-sS",
                "-i",
                flag,
                "-H",
                "x-forwarded-client-cert: URI=spiffe://evil",
                &url,
            ]),
        )
        .await;
        assert!(ok, "{out}");
        assert!(out.contains(" 200"), "{out}");
        assert!(
            out.to_lowercase()
                .contains(&format!("x-seen-version: {}", version.to_lowercase())),
            "{out}"
        );
        assert!(
            out.contains(&format!("URI={FRONTEND}")) && !out.contains("evil"),
            "{out}"
        );

        let url = format!("{base}/admin");
        let (ok, out) = run("curl", s(&["-sS", "-i", flag, &url])).await;
        assert!(
            ok && out.contains(" 403") && out.contains("denied by policy"),
            "{out}"
        );
    }
}

#[tokio::test]
async fn curl_with_a_client_certificate_to_the_inbound_sidecar() {
    if !tools::require(
        "curl_with_a_client_certificate_to_the_inbound_sidecar",
        &["curl"],
    ) {
        return;
    }
    let pair = start_pair(HttpSettings::default()).await;
    let (_dir, files) = client_files(&pair.ca, "/ns/web/sa/frontend");
    let port = pair.inbound.port();
    let url = format!("https://localhost:{port}/public/direct");
    let resolve = format!("localhost:{port}:127.0.0.1");
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let args = s(&[
            "-sS",
            "-i",
            flag,
            "--tlsv1.3",
            "--resolve",
            &resolve,
            "--cacert",
            files.bundle.to_str().unwrap(),
            "--cert",
            files.cert.to_str().unwrap(),
            "--key",
            files.key.to_str().unwrap(),
            &url,
        ]);
        let (ok, out) = run("curl", args).await;
        assert!(ok && out.contains(" 200"), "{out}");
        // The app sees the version curl spoke (ALPN picked it) and the caller's identity.
        assert!(
            out.to_lowercase()
                .contains(&format!("x-seen-version: {}", version.to_lowercase())),
            "{out}"
        );
        assert!(out.contains(&format!("URI={FRONTEND}")), "{out}");
    }
    let lines = pair.inbound_lines.wait_requests("inbound", 2).await;
    assert_eq!(lines[0]["http"]["version"], "HTTP/1.1");
    assert_eq!(lines[1]["http"]["version"], "HTTP/2.0");
}

#[tokio::test]
async fn h2load_over_http2_and_http1() {
    if !tools::require("h2load_over_http2_and_http1", &["h2load"]) {
        return;
    }
    let pair = start_pair(HttpSettings::default()).await;
    let url = format!("http://{}/public/load", pair.outbound);
    for extra in [&[][..], &["--h1"][..]] {
        let mut args = s(&["-n", "400", "-c", "4", "-m", "8"]);
        args.extend(s(extra));
        args.push(url.clone());
        let (ok, out) = run("h2load", args).await;
        assert!(ok, "{out}");
        assert!(out.contains("400 succeeded, 0 failed"), "{out}");
        assert!(out.contains("status codes: 400 2xx"), "{out}");
    }
    let lines = pair.inbound_lines.wait_requests("inbound", 800).await;
    assert!(lines.iter().all(|l| l["http"]["status"] == 200));
}
