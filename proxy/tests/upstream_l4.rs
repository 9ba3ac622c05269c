//! Opaque-TCP routes with several endpoints, through a sidecar pair (real sockets, real mTLS):
//! each connection picks an endpoint with the balancer and, when the connect fails, tries the
//! next, on the outbound side (mTLS origination) and on the inbound side (plaintext to the app).

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshguard_identity::test_ca::TestCa;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An echo server that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A loopback address nothing listens on: connects to it are refused.
async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

fn list(endpoints: &[SocketAddr]) -> String {
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    quoted.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_reaches_a_live_endpoint_past_a_dead_one_on_both_sides() {
    let ca = TestCa::new(TD);
    let server = Workload::new(&ca, LEDGER);
    let client = Workload::new(&ca, PAYMENTS);
    let policy = server.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let (echo_a, accepted_a) = counting_echo().await;
    let (echo_b, accepted_b) = counting_echo().await;
    let dead_app = dead_addr().await;
    // Round robin, so the dead endpoint is picked first in turn and every connection that meets
    // it shows the second try.
    let inbound = server
        .start(&format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npolicy = \"{}\"\n\
             upstream = {{ endpoints = [{}], balancer = \"round-robin\" }}\n",
            policy.display(),
            list(&[dead_app, echo_a, echo_b])
        ))
        .await;
    let dead_sidecar = dead_addr().await;
    let outbound = client
        .start(&format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nexpect = [\"{}\"]\n\
             upstream = {{ endpoints = [{}], balancer = \"round-robin\" }}\n",
            id(LEDGER),
            list(&[dead_sidecar, inbound.inbound_addrs[0]])
        ))
        .await;

    const CONNECTIONS: u64 = 30;
    for n in 0..CONNECTIONS {
        let payload = format!("ledger entry {n}");
        let back = round_trip(outbound.outbound_addrs[0], payload.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("connection {n} failed: {e}"));
        assert_eq!(back, payload.as_bytes(), "connection {n}");
    }
    let (a, b) = (
        accepted_a.load(Ordering::Relaxed),
        accepted_b.load(Ordering::Relaxed),
    );
    assert_eq!(a + b, CONNECTIONS, "every connection reached one live app");
    assert!(
        a > 0 && b > 0,
        "both live endpoints take connections: {a}, {b}"
    );

    // The access logs name the endpoint that served and count the tries.
    let inbound_retry = server
        .wait_for_log(|l| l["attempts"] == 2 && l["upstream"] != dead_app.to_string())
        .await;
    assert!(
        [echo_a.to_string(), echo_b.to_string()]
            .contains(&inbound_retry["upstream"].as_str().unwrap().to_owned()),
        "{inbound_retry}"
    );
    let outbound_retry = client.wait_for_log(|l| l["attempts"] == 2).await;
    assert_eq!(
        outbound_retry["upstream"],
        inbound.inbound_addrs[0].to_string(),
        "{outbound_retry}"
    );
}
