//! Credential rotation while connections are open: open connections continue untouched, new
//! handshakes present the new certificate, and an invalid rotation is refused.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Reply, TestServer, connect, round_trip};
use meshguard_identity::test_ca::TestCa;
use meshguard_identity::{Credentials, IdentityError, TlsProfile, peer_spiffe_id};

#[tokio::test]
async fn swap_keeps_open_connections_and_new_ones_see_the_new_certificate() {
    let ca = TestCa::new("bank.example");
    let server_creds = ca.rotating("/ns/ledger/sa/ledger");
    let client_creds = ca.rotating("/ns/payments/sa/payments");
    let mut updates = server_creds.subscribe();
    let server_cfg = TlsProfile::new(server_creds.clone())
        .server_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;
    let client_profile = TlsProfile::new(client_creds.clone());

    let mut open = connect(client_profile.client_config().unwrap(), server.addr)
        .await
        .unwrap();
    let old_leaf = open.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        round_trip(&mut open, "before").await.unwrap(),
        "echo spiffe://bank.example/ns/payments/sa/payments: before"
    );
    server.next_handshake().await.unwrap();

    // Rotate both sides to new SVIDs (new keys, new IDs so the change is visible).
    server_creds
        .rotate(ca.credentials("/ns/ledger/sa/ledger-v2"))
        .unwrap();
    client_creds
        .rotate(ca.credentials("/ns/payments/sa/payments-v2"))
        .unwrap();
    assert!(updates.has_changed().unwrap());
    assert_eq!(
        updates.borrow_and_update().svid.spiffe_id().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger-v2"
    );

    // The open connection keeps working, with the identities it was established with.
    assert_eq!(
        round_trip(&mut open, "after").await.unwrap(),
        "echo spiffe://bank.example/ns/payments/sa/payments: after"
    );
    assert_eq!(open.get_ref().1.peer_certificates().unwrap()[0], old_leaf);

    // A new connection (a fresh client config, so no resumed session) sees the new certificates.
    let mut fresh = connect(client_profile.client_config().unwrap(), server.addr)
        .await
        .unwrap();
    let (_, conn) = fresh.get_ref();
    assert_ne!(conn.peer_certificates().unwrap()[0], old_leaf);
    assert_eq!(
        peer_spiffe_id(conn).unwrap().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger-v2"
    );
    assert_eq!(
        round_trip(&mut fresh, "new").await.unwrap(),
        "echo spiffe://bank.example/ns/payments/sa/payments-v2: new"
    );
    let accepted = server.next_handshake().await.unwrap();
    assert_eq!(
        accepted.peer.unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments-v2"
    );

    // And the old connection is still fine after new handshakes happened.
    assert!(round_trip(&mut open, "still").await.is_ok());
}

#[tokio::test]
async fn rotation_to_credentials_that_do_not_validate_is_refused() {
    let ca = TestCa::new("bank.example");
    let creds = ca.rotating("/ns/ledger/sa/ledger");
    let before = creds.current();

    // An SVID from another CA with our (old) bundle: it does not chain, so it is refused.
    let other = TestCa::new("bank.example");
    let svid = other.issue("/ns/ledger/sa/ledger").to_svid().unwrap();
    let err = creds
        .rotate(Credentials::new(svid, ca.bundle_set()))
        .unwrap_err();
    assert!(matches!(err, IdentityError::Svid(_)), "{err:?}");
    assert!(std::sync::Arc::ptr_eq(&before, &creds.current()));

    // A new CA with its new bundle is fine: CA rotation goes through the same door.
    creds
        .rotate(other.credentials("/ns/ledger/sa/ledger"))
        .unwrap();
    assert_eq!(creds.current().bundles, other.bundle_set());
    assert_eq!(creds.expires_at(), creds.current().svid.expires_at());
}

#[tokio::test]
async fn resumption_does_not_survive_a_rotation() {
    let ca = TestCa::new("bank.example");
    let server_creds = ca.rotating("/ns/ledger/sa/ledger");
    let client_creds = ca.rotating("/ns/payments/sa/payments");
    let server_cfg = TlsProfile::new(server_creds.clone())
        .server_config()
        .unwrap();
    let client_cfg = TlsProfile::new(client_creds.clone())
        .client_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;

    // Establish a session and check that it resumes while nothing rotates.
    for expect_resumed in [false, true] {
        let mut tls = connect(client_cfg.clone(), server.addr).await.unwrap();
        round_trip(&mut tls, "x").await.unwrap();
        assert_eq!(
            server.next_handshake().await.unwrap().info.resumed,
            expect_resumed
        );
    }

    // The server rotates: its old tickets are refused, the client does a full handshake and sees
    // the server's new certificate.
    server_creds
        .rotate(ca.credentials("/ns/ledger/sa/ledger-v2"))
        .unwrap();
    let mut tls = connect(client_cfg.clone(), server.addr).await.unwrap();
    assert_eq!(
        peer_spiffe_id(tls.get_ref().1).unwrap().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger-v2"
    );
    round_trip(&mut tls, "x").await.unwrap();
    assert!(!server.next_handshake().await.unwrap().info.resumed);

    // The client rotates: its cached sessions are dropped, the server sees the new client ID.
    client_creds
        .rotate(ca.credentials("/ns/payments/sa/payments-v2"))
        .unwrap();
    let mut tls = connect(client_cfg, server.addr).await.unwrap();
    round_trip(&mut tls, "x").await.unwrap();
    let accepted = server.next_handshake().await.unwrap();
    assert!(!accepted.info.resumed);
    assert_eq!(
        accepted.peer.unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments-v2"
    );
}
