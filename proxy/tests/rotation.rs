//! Scale and change without restart: 1,000 idle connections through a sidecar pair stay open
//! across credential rotations under traffic; a policy edit applies to new connections.

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshguard_identity::test_ca::TestCa;
use meshguard_proxy::CredentialsInput;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

async fn ping(stream: &mut TcpStream, byte: u8) -> std::io::Result<()> {
    stream.write_all(&[byte]).await?;
    let mut back = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
    assert_eq!(back[0], byte);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_survive_credential_rotation_under_traffic() {
    const IDLE: usize = 1000;
    let ca = Arc::new(TestCa::new(TD));
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let client = Workload::new(&ca, PAYMENTS);
    let server_creds = ca.rotating(LEDGER);
    let client_creds = ca.rotating(PAYMENTS);
    let policy = server.write("policy.toml", &allow_only(&id(PAYMENTS)));
    let server_proxy = server
        .start_with(
            &inbound(echo, &policy),
            CredentialsInput::Given(server_creds.clone()),
        )
        .await;
    let client_proxy = client
        .start_with(
            &outbound(server_proxy.inbound_addrs[0], &id(LEDGER)),
            CredentialsInput::Given(client_creds.clone()),
        )
        .await;
    let addr = client_proxy.outbound_addrs[0];

    // Open the idle connections, each proven end to end by one echoed byte.
    let mut opening = JoinSet::new();
    for _ in 0..IDLE {
        opening.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            ping(&mut stream, 1).await.unwrap();
            stream
        });
    }
    let mut idle: Vec<TcpStream> = opening.join_all().await;
    assert_eq!(idle.len(), IDLE);

    // Traffic on fresh connections while both sides rotate three times.
    let busy = tokio::spawn(async move {
        let mut done = 0u32;
        for round in 0..60u8 {
            let back = round_trip(addr, &[round; 100])
                .await
                .expect("a connection failed during rotation");
            assert_eq!(back, vec![round; 100]);
            done += 1;
        }
        done
    });
    let before = server_creds.current().svid.not_after();
    for _ in 0..3 {
        server_creds.rotate(ca.credentials(LEDGER)).unwrap();
        client_creds.rotate(ca.credentials(PAYMENTS)).unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        busy.await.unwrap(),
        60,
        "every connection during rotation succeeded"
    );
    assert!(server_creds.current().svid.not_after() >= before);

    // Every idle connection opened before the rotations still works.
    for (i, stream) in idle.iter_mut().enumerate() {
        ping(stream, 2)
            .await
            .unwrap_or_else(|e| panic!("idle connection {i} broke: {e}"));
    }
    let metrics = server_proxy.metrics.encode();
    let active = metrics
        .lines()
        .find(|l| l.starts_with("meshguard_connections_active{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap();
    assert!(
        active >= IDLE as i64,
        "server sidecar holds {active} connections"
    );
    assert!(
        !metrics.contains("meshguard_tls_handshake_failures_total{"),
        "no handshake failed:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_applies_to_new_connections_without_a_restart() {
    let echo = echo_server().await;
    let pair = Pair::start(echo, &id(PAYMENTS), &id(LEDGER)).await;
    assert_eq!(
        round_trip(pair.outbound_addr(), b"one").await.unwrap(),
        b"one"
    );
    // An edit that breaks the file keeps the last good revision.
    pair.server.write(
        "policy/policy.toml",
        "default = \"deny\"\n[[policy]]\nname = \"x\"\nactoin = \"allow\"\n",
    );
    let store = pair.server_proxy.authorizers[0].store().clone();
    let revision = store.revision();
    assert!(store.reload().is_err(), "the broken file is refused");
    assert_eq!(store.revision(), revision, "the last good revision stays");
    assert_eq!(
        round_trip(pair.outbound_addr(), b"two").await.unwrap(),
        b"two",
        "broken edit ignored"
    );
    // A valid edit that no longer allows payments takes effect for new connections.
    pair.server.write(
        "policy/policy.toml",
        &allow_only(&id("/ns/reporting/sa/reporting")),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let back = round_trip(pair.outbound_addr(), b"three")
            .await
            .unwrap_or_default();
        if back.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new policy was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = pair.server.wait_for_log(|l| l["decision"] == "deny").await;
    assert_eq!(line["peer_id"], id(PAYMENTS));
}
