//! End-to-end L4 tests: real sockets on 127.0.0.1, real TLS, sidecars started from config text.

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshguard_identity::test_ca::{BadSvid, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn bytes_flow_end_to_end_through_an_outbound_and_an_inbound_sidecar() {
    let echo = echo_server().await;
    let pair = Pair::start(echo, &id(PAYMENTS), &id(LEDGER)).await;

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let back = round_trip(pair.outbound_addr(), &payload).await.unwrap();
    assert_eq!(back, payload, "every byte comes back through both sidecars");

    let inbound = pair
        .server
        .wait_for_log(|l| l["direction"] == "inbound")
        .await;
    assert_eq!(inbound["peer_id"], id(PAYMENTS));
    assert_eq!(inbound["local_id"], id(LEDGER));
    assert_eq!(inbound["decision"], "allow");
    assert_eq!(inbound["policy"], "allow-payments");
    assert_eq!(inbound["tls_version"], "TLSv1_3");
    assert_eq!(inbound["kx_group"], "X25519MLKEM768");
    assert_eq!(inbound["bytes_in"], 300_000);
    assert_eq!(inbound["bytes_out"], 300_000);
    assert_eq!(inbound["upstream"], echo.to_string());
    assert!(inbound["error_class"].is_null(), "{inbound}");

    let outbound = pair
        .client
        .wait_for_log(|l| l["direction"] == "outbound")
        .await;
    assert_eq!(outbound["peer_id"], id(LEDGER));
    assert_eq!(outbound["local_id"], id(PAYMENTS));
    assert_eq!(outbound["upstream"], pair.inbound_addr().to_string());
    assert_eq!(outbound["bytes_in"], 300_000);
    assert!(
        outbound["cipher_suite"]
            .as_str()
            .unwrap()
            .starts_with("TLS13_")
    );
}

#[tokio::test]
async fn a_peer_the_policy_does_not_allow_is_closed_after_the_handshake_and_logged() {
    let echo = echo_server().await;
    // The server only allows reporting; payments is denied by default.
    let pair = Pair::start_with(
        Arc::new(TestCa::new(TD)),
        LEDGER,
        echo,
        &id("/ns/reporting/sa/reporting"),
        &id(LEDGER),
        "[decision_log]\npath = \"decisions.log\"\n",
    )
    .await;
    let back = round_trip(pair.outbound_addr(), b"hello")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "nothing reaches the app: {back:?}");
    let denied = pair.server.wait_for_log(|l| l["decision"] == "deny").await;
    assert_eq!(denied["peer_id"], id(PAYMENTS));
    assert_eq!(denied["error_class"], "policy");
    assert!(denied["reason"].as_str().unwrap().len() > 5, "{denied}");
    assert_eq!(denied["bytes_in"], 0);
    let metrics = pair.server_proxy.metrics.encode();
    assert!(metrics.contains("outcome=\"deny\""), "{metrics}");
    // The policy crate's decision log has the deny too, with the policy revision.
    let deny = wait_for_line(&pair.server.path("decisions.log"), |d| {
        d["outcome"] == "deny"
    })
    .await;
    assert!(deny.to_string().contains(&id(PAYMENTS)), "{deny}");
    assert!(deny.to_string().contains("revision"), "{deny}");
}

#[tokio::test]
async fn clients_with_no_foreign_or_expired_certificates_are_refused_with_specific_reasons() {
    let ca = TestCa::new(TD);
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write("policy.toml", "default = \"allow-authenticated\"\n");
    let proxy = server.start(&inbound(echo, &policy)).await;
    let addr = proxy.inbound_addrs[0];

    // A good client first, so we know the listener works.
    let good = ca.issue(PAYMENTS);
    assert_eq!(
        tls_client_round_trip(addr, &ca, Some(&good), b"hi")
            .await
            .unwrap(),
        b"hi"
    );

    let cases = [
        (None, "no_client_certificate", "presented no certificate"),
        (
            Some(bad(&ca, BadSvid::OtherTrustDomain, PAYMENTS)),
            "foreign_trust_domain",
            "no trust bundle is configured",
        ),
        (
            Some(bad(&ca, BadSvid::Expired, PAYMENTS)),
            "expired_certificate",
            "expired",
        ),
        (
            Some(bad(&ca, BadSvid::UnknownIssuer, PAYMENTS)),
            "unknown_issuer",
            "unknown CA",
        ),
    ];
    for (cert, label, words) in &cases {
        let result = tls_client_round_trip(addr, &ca, cert.as_ref(), b"secret").await;
        assert!(
            result.as_deref().unwrap_or_default().is_empty(),
            "{label}: data got through: {result:?}"
        );
        let line = server
            .wait_for_log(|l| {
                l["error_class"] == "downstream"
                    && l["reason"].as_str().is_some_and(|r| r.contains(words))
            })
            .await;
        assert!(
            line["decision"].is_null(),
            "refused before any decision: {line}"
        );
        let metrics = proxy.metrics.encode();
        assert!(
            metrics.contains(&format!("reason=\"{label}\"}} 1")),
            "{label} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_server_presenting_an_unexpected_identity_is_refused_naming_both_ids() {
    let echo = echo_server().await;
    let ca = Arc::new(TestCa::new(TD));
    // The target presents /ns/impostor while the client expects the ledger.
    let pair = Pair::start_with(
        ca,
        "/ns/impostor/sa/x",
        echo,
        &id(PAYMENTS),
        &id(LEDGER),
        "",
    )
    .await;
    let back = round_trip(pair.outbound_addr(), b"hello")
        .await
        .unwrap_or_default();
    assert!(back.is_empty());
    let line = pair
        .client
        .wait_for_log(|l| l["direction"] == "outbound" && !l["error_class"].is_null())
        .await;
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains(&id("/ns/impostor/sa/x")),
        "presented ID named: {reason}"
    );
    assert!(reason.contains(&id(LEDGER)), "expected ID named: {reason}");
    assert_eq!(line["peer_id"], id("/ns/impostor/sa/x"));
    assert_eq!(line["error_class"], "upstream");
    assert!(
        pair.client_proxy
            .metrics
            .encode()
            .contains("reason=\"unexpected_identity\"} 1")
    );
}

#[tokio::test]
async fn plaintext_and_garbage_on_the_mtls_port_hurt_nobody() {
    let echo = echo_server().await;
    let pair = Pair::start(echo, &id(PAYMENTS), &id(LEDGER)).await;

    // A long-lived good connection, open across the abuse.
    let mut good = TcpStream::connect(pair.outbound_addr()).await.unwrap();
    good.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    good.read_exact(&mut buf).await.unwrap();

    let mut junk: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nhost: ledger\r\n\r\n".to_vec(),
        b"\x16\x03\x01\xff\xff garbage after a TLS record header".to_vec(),
        vec![0u8; 70_000],
        b"\x16\x03\x03\x00\x05\x01\x00\x00\x01\x00".to_vec(),
    ];
    junk.extend((0..20u8).map(|seed| {
        (0..2048u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }));
    for bytes in &junk {
        let mut stream = TcpStream::connect(pair.inbound_addr()).await.unwrap();
        let _ = stream.write_all(bytes).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    }
    pair.server
        .wait_for_log(|l| {
            l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("does not speak TLS"))
        })
        .await;

    good.write_all(b"after!").await.unwrap();
    good.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!", "the open connection is untouched");
    assert_eq!(
        round_trip(pair.outbound_addr(), b"new").await.unwrap(),
        b"new",
        "new connections still work"
    );
}

#[tokio::test]
async fn the_connection_limit_refuses_extra_connections_and_logs_them() {
    // A target that never answers: the first connection's handshake stalls and holds the slot.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca = TestCa::new(TD);
    let client = Workload::new(&ca, PAYMENTS);
    let proxy = client
        .start(&format!(
            "{}max_connections = 1\n",
            outbound(silent.local_addr().unwrap(), &id(LEDGER))
        ))
        .await;
    let _first = TcpStream::connect(proxy.outbound_addrs[0]).await.unwrap();
    let mut second = TcpStream::connect(proxy.outbound_addrs[0]).await.unwrap();
    let line = client
        .wait_for_log(|l| l["error_class"] == "internal")
        .await;
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("connection limit of 1"),
        "{line}"
    );
    let mut sink = Vec::new();
    let _ = second.read_to_end(&mut sink).await;
    assert!(proxy.metrics.encode().contains(
        "meshguard_connections_refused_over_limit_total{listener=\"outbound:127.0.0.1:0\"} 1"
    ));
}

#[tokio::test]
async fn shutdown_drains_open_connections_within_the_grace_period() {
    let echo = echo_server().await;
    let pair = Pair::start_with(
        Arc::new(TestCa::new(TD)),
        LEDGER,
        echo,
        &id(PAYMENTS),
        &id(LEDGER),
        "",
    )
    .await;
    let mut open = TcpStream::connect(pair.outbound_addr()).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();

    let client_addr = pair.outbound_addr();
    let stopper = pair.client_proxy.stopper();
    let stopped = tokio::spawn(pair.client_proxy.stopped());
    stopper.send(true).unwrap();
    // New connections are refused once the listener has stopped...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(client_addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...while the open one keeps working until it ends by itself.
    open.write_all(b"y").await.unwrap();
    open.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
    assert!(
        !stopped.is_finished(),
        "the proxy waits for the open connection"
    );
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .unwrap()
        .unwrap();
}
