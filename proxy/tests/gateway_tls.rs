//! A gateway's legacy side with TLS: an inbound forwarding over TLS to a legacy host verified
//! against its own CA file (TLS 1.2 only when the config allows it), and an outbound terminating
//! TLS for legacy clients, with `curl` as the legacy client. Real sockets, real TLS.
#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test at once

mod support;
mod tools;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use meshguard_identity::test_ca::{SvidSpec, TestCa};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const GATEWAY: &str = "/gateway/core-banking";
const LEGACY_NAME: &str = "core.bank.example";

/// A legacy host: a TLS echo server with a certificate for `core.bank.example` from `ca`, speaking
/// only the given TLS version.
async fn legacy_tls_echo(ca: &TestCa, tls12_only: bool) -> SocketAddr {
    let (chain, key) = ca
        .issue_with(&SvidSpec::new("/legacy/core").dns(LEGACY_NAME))
        .cert_and_key();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn forward_tls_inbound(legacy: SocketAddr, policy: &Path, ca: &Path, extra: &str) -> String {
    format!(
        "{}forward_tls = {{ ca = \"{}\", server_name = \"{LEGACY_NAME}\"{extra} }}\n",
        inbound(legacy, policy),
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_forwards_over_tls_to_a_legacy_host_verified_by_its_ca() {
    let mesh_ca = TestCa::new(TD);
    let legacy_ca = TestCa::new("legacy.example");
    let legacy = legacy_tls_echo(&legacy_ca, false).await;
    let gateway = Workload::new(&mesh_ca, GATEWAY);
    let ca_file = gateway.write("legacy-ca.pem", &legacy_ca.bundle_pem());
    let policy = gateway.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let proxy = gateway
        .start(&forward_tls_inbound(legacy, &policy, &ca_file, ""))
        .await;
    let payments = mesh_ca.issue(PAYMENTS);
    let back = tls_client_round_trip(proxy.inbound_addrs[0], &mesh_ca, Some(&payments), b"ledger")
        .await
        .unwrap();
    assert_eq!(
        back, b"ledger",
        "bytes went to the legacy host over TLS and back"
    );
    let line = gateway
        .wait_for_log(|l| l["decision"] == "allow" && l["bytes_in"] == 6)
        .await;
    assert_eq!(line["upstream"], legacy.to_string());
    proxy.shutdown().await;

    // A legacy host whose certificate the configured CA did not sign is refused.
    let other_ca = TestCa::new("elsewhere.example");
    let impostor = legacy_tls_echo(&other_ca, false).await;
    let gateway = Workload::new(&mesh_ca, GATEWAY);
    let ca_file = gateway.write("legacy-ca.pem", &legacy_ca.bundle_pem());
    let policy = gateway.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let proxy = gateway
        .start(&forward_tls_inbound(impostor, &policy, &ca_file, ""))
        .await;
    let back = tls_client_round_trip(proxy.inbound_addrs[0], &mesh_ca, Some(&payments), b"x")
        .await
        .unwrap_or_default();
    assert!(
        back.is_empty(),
        "nothing comes back from an unverified host"
    );
    let line = gateway
        .wait_for_log(|l| l["error_class"] == "upstream")
        .await;
    let reason = line["reason"].as_str().unwrap();
    assert!(reason.starts_with("TLS to the legacy host"), "{reason}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_towards_a_legacy_host_only_when_the_config_allows_it() {
    let mesh_ca = TestCa::new(TD);
    let legacy_ca = TestCa::new("legacy.example");
    let legacy = legacy_tls_echo(&legacy_ca, true).await;
    let payments = mesh_ca.issue(PAYMENTS);
    for (extra, works) in [("", false), (", allow_tls12 = true", true)] {
        let gateway = Workload::new(&mesh_ca, GATEWAY);
        let ca_file = gateway.write("legacy-ca.pem", &legacy_ca.bundle_pem());
        let policy = gateway.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
        let proxy = gateway
            .start(&forward_tls_inbound(legacy, &policy, &ca_file, extra))
            .await;
        let back = tls_client_round_trip(proxy.inbound_addrs[0], &mesh_ca, Some(&payments), b"old")
            .await
            .unwrap_or_default();
        assert_eq!(back == b"old", works, "allow_tls12 {extra:?}: {back:?}");
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_as_a_legacy_client_reaches_the_mesh_through_an_outbound_with_server_tls() {
    if !tools::require("curl_as_a_legacy_client_reaches_the_mesh...", &["curl"]) {
        return;
    }
    let mesh_ca = TestCa::new(TD);
    let legacy_ca = TestCa::new("legacy.example");
    let app = http_server().await;
    // The ledger's sidecar in the mesh, allowing the gateway.
    let ledger = Workload::new(&mesh_ca, LEDGER);
    let policy = ledger.write("policy/policy.toml", &allow_only(&id(GATEWAY)));
    let ledger_proxy = ledger.start(&inbound(app, &policy)).await;

    // The gateway: TLS for legacy clients, mTLS to the ledger.
    let gateway = Workload::new(&mesh_ca, GATEWAY);
    std::fs::create_dir_all(gateway.path("legacy")).unwrap();
    let served = legacy_ca
        .issue_with(&SvidSpec::new("/legacy/gateway").dns("gateway.bank.example"))
        .write_to_dir(&gateway.path("legacy"), &legacy_ca.bundle_pem())
        .unwrap();
    let gateway_proxy = gateway
        .start(&format!(
            "{}listen_tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            outbound(ledger_proxy.inbound_addrs[0], &id(LEDGER)),
            served.cert.display(),
            served.key.display()
        ))
        .await;
    let port = gateway_proxy.outbound_addrs[0].port();
    let curl = |extra: &'static [&'static str]| {
        let bundle = served.bundle.clone();
        async move {
            tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", "--resolve"])
                .arg(format!("gateway.bank.example:{port}:127.0.0.1"))
                .arg("--cacert")
                .arg(bundle)
                .args(extra)
                .arg(format!(
                    "https://gateway.bank.example:{port}/ledger/balances"
                ))
                .output()
                .await
                .unwrap()
        }
    };
    let output = curl(&[]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = gateway
        .wait_for_log(|l| l["direction"] == "outbound" && l["decision"] == "allow")
        .await;
    assert_eq!(line["peer_id"], id(LEDGER));
    assert_eq!(line["sni"], "gateway.bank.example");

    // TLS 1.2 is refused on the legacy-client side.
    let output = curl(&["--tls-max", "1.2"]).await;
    assert!(!output.status.success(), "a TLS 1.2 client is refused");
    let line = gateway
        .wait_for_log(|l| l["error_class"] == "downstream")
        .await;
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("TLS from the legacy client failed"),
        "{line}"
    );
    gateway_proxy.shutdown().await;
    ledger_proxy.shutdown().await;
}

#[test]
fn legacy_tls_needs_tcp_and_readable_files() {
    let text = "[identity]\nfiles = { cert = \"c\", key = \"k\", bundle = \"b\" }\n\
                [[outbound]]\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:1\"\nexpect = [\"spiffe://td/x\"]\n\
                protocol = \"http\"\nlisten_tls = { cert = \"c.pem\", key = \"k.pem\" }\n";
    let error = meshguard_proxy::Config::parse(text, Path::new("gw.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("gw.toml:3:") && error.contains("tcp"),
        "{error}"
    );
    let missing =
        meshguard_proxy::legacy_tls::LegacyClient::new(&meshguard_proxy::legacy_tls::ForwardTls {
            ca: "/nonexistent/ca.pem".into(),
            server_name: LEGACY_NAME.into(),
            allow_tls12: false,
        })
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("/nonexistent/ca.pem: cannot read"),
        "{missing}"
    );
}
