//! The L7 proxy as configured: `protocol = "detect"` and `"http"` listeners started from config
//! text by `meshguard_proxy::start`, curl through the pair, request lines in the access-log file,
//! request metrics on the admin endpoint.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use meshguard_identity::test_ca::TestCa;
use support::{PAYMENTS, Workload, id, inbound, outbound, wait_for_line};

const POLICY: &str = r#"
default = "deny"
[[policy]]
name = "payments-public"
action = "allow"
principals = ["spiffe://bank.example/ns/payments/sa/payments"]
methods = ["GET"]
paths = ["/public/*"]
"#;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[tokio::test]
async fn detect_and_http_listeners_from_config() {
    let ca = Arc::new(TestCa::new(support::TD));
    let app = http_support::start_app(http_support::Seen::default()).await;
    let server = Workload::new(&ca, support::LEDGER);
    let client = Workload::new(&ca, PAYMENTS);
    let policy = server.write("policy/policy.toml", POLICY);
    let http = "[http]\nrequest_timeout = \"5s\"\nmax_header_bytes = 32768\n";
    let server_proxy = server
        .start(&format!(
            "{}protocol = \"detect\"\n{http}",
            inbound(app, &policy)
        ))
        .await;
    let client_proxy = client
        .start(&format!(
            "{}protocol = \"http\"\n{}protocol = \"detect\"\n",
            outbound(server_proxy.inbound_addrs[0], &id(support::LEDGER)),
            outbound(server_proxy.inbound_addrs[0], &id(support::LEDGER))
                .replace("[[outbound]]", "[[outbound]]\nname = \"detecting\""),
        ))
        .await;

    for (addr, flag) in [
        (client_proxy.outbound_addrs[0], "--http1.1"),
        (client_proxy.outbound_addrs[1], "--http1.1"),
        (client_proxy.outbound_addrs[1], "--http2-prior-knowledge"),
    ] {
        let url = format!("http://{addr}/public/x");
        let (ok, out) = http_support::run(
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
        assert!(ok && out.contains(" 200"), "{out}");
        assert!(
            out.contains(&format!("URI={}", id(PAYMENTS))) && !out.contains("evil"),
            "{out}"
        );
        let url = format!("http://{addr}/admin");
        let (ok, out) = http_support::run("curl", s(&["-sS", "-i", flag, &url])).await;
        assert!(
            ok && out.contains(" 403") && out.contains("denied by policy"),
            "{out}"
        );
    }

    let denied = wait_for_line(&server.access_log(), |l| l["http"]["path"] == "/admin").await;
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["peer_id"], id(PAYMENTS));
    assert_eq!(denied["local_id"], id(support::LEDGER));
    assert_eq!(denied["alpn"], "h2");
    assert_eq!(denied["http"]["status"], 403);
    let allowed = wait_for_line(&server.access_log(), |l| l["http"]["path"] == "/public/x").await;
    assert_eq!(allowed["policy"], "payments-public");
    assert_eq!(allowed["tls_version"], "TLSv1_3");

    let metrics = format!("http://{}/metrics", server_proxy.admin_addr);
    let (ok, out) = http_support::run("curl", s(&["-sS", &metrics])).await;
    assert!(ok, "{out}");
    let deny_line = out
        .lines()
        .find(|l| l.starts_with("meshguard_http_requests_total") && l.contains("decision=\"deny\""))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(deny_line.ends_with(" 3"), "{deny_line}");
    assert!(
        out.contains("meshguard_http_request_duration_seconds_bucket"),
        "{out}"
    );
    client_proxy.shutdown().await;
    server_proxy.shutdown().await;
}
