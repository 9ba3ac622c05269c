//! Real TLS handshakes between meshguard endpoints on 127.0.0.1: the profile negotiates TLS 1.3
//! with X25519MLKEM768, both sides learn the peer's SPIFFE ID, and every bad certificate is
//! refused during the handshake with its own specific error.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Reply, TestServer, connect, round_trip, tls_error};
use meshguard_identity::test_ca::{BadSvid, TestCa};
use meshguard_identity::tls::dangerous::{
    dangerous_client_config_presenting, dangerous_server_config_presenting,
};
use meshguard_identity::verifier::refusal_reason;
use meshguard_identity::{
    ClientAuth, ExpectedIdentities, IdentityError, SvidError, TlsProfile, peer_spiffe_id,
    svid_refusal, tls_info,
};

const SERVER: &str = "/ns/ledger/sa/ledger";
const CLIENT: &str = "/ns/payments/sa/payments";

#[tokio::test]
async fn mtls_negotiates_tls13_with_x25519mlkem768_and_both_ids() {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating(SERVER))
        .with_alpn(["h2"])
        .server_config()
        .unwrap();
    let client_cfg = TlsProfile::new(ca.rotating(CLIENT))
        .with_alpn(["h2"])
        .client_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;

    let mut tls = connect(client_cfg, server.addr).await.unwrap();
    let (_, conn) = tls.get_ref();
    let client_side = tls_info(conn);
    assert_eq!(
        peer_spiffe_id(conn).unwrap().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger"
    );
    assert_eq!(client_side.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(client_side.kx_group.as_deref(), Some("X25519MLKEM768"));
    assert_eq!(client_side.alpn.as_deref(), Some("h2"));

    let answer = round_trip(&mut tls, "hello").await.unwrap();
    assert_eq!(
        answer,
        "echo spiffe://bank.example/ns/payments/sa/payments: hello"
    );
    let accepted = server.next_handshake().await.unwrap();
    assert_eq!(
        accepted.peer.unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments"
    );
    assert_eq!(accepted.info.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(accepted.info.kx_group.as_deref(), Some("X25519MLKEM768"));
}

#[tokio::test]
async fn second_connection_resumes_the_session() {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating(SERVER))
        .server_config()
        .unwrap();
    let client_cfg = TlsProfile::new(ca.rotating(CLIENT))
        .client_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;

    let mut first = connect(client_cfg.clone(), server.addr).await.unwrap();
    // Tickets arrive after the handshake; one round trip makes sure the client has read them.
    round_trip(&mut first, "one").await.unwrap();
    assert!(!server.next_handshake().await.unwrap().info.resumed);

    let mut second = connect(client_cfg, server.addr).await.unwrap();
    round_trip(&mut second, "two").await.unwrap();
    let accepted = server.next_handshake().await.unwrap();
    assert!(accepted.info.resumed, "{:?}", accepted.info);
    // A resumed session still carries the client's verified identity.
    assert_eq!(
        accepted.peer.unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments"
    );
}

/// Presents a bad client certificate; returns the error the server's handshake failed with.
async fn server_refusal(bad: BadSvid) -> rustls::Error {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating(SERVER))
        .server_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;
    let issued = ca.issue_bad(bad, CLIENT);
    let client_cfg =
        dangerous_client_config_presenting(Some(issued.cert_and_key()), ca.bundle_set()).unwrap();

    // In TLS 1.3 the client finishes first; the refusal shows on its first read.
    if let Ok(mut tls) = connect(client_cfg, server.addr).await {
        assert!(round_trip(&mut tls, "let me in").await.is_err());
    }
    let err = server
        .next_handshake()
        .await
        .expect_err("bad client accepted");
    tls_error(&err).expect("a TLS error").clone()
}

/// The bad kinds the issue names, each with the one reason it must be refused for.
const BAD_KINDS: [BadSvid; 8] = [
    BadSvid::Expired,
    BadSvid::NotYetValid,
    BadSvid::OtherTrustDomain,
    BadSvid::TwoUriSans,
    BadSvid::NoUriSan,
    BadSvid::CaAsLeaf,
    BadSvid::NoKeyUsage,
    BadSvid::UnknownIssuer,
];

fn is_reason_for(bad: BadSvid, reason: &SvidError) -> bool {
    match bad {
        BadSvid::Expired => matches!(reason, SvidError::Expired { .. }),
        BadSvid::NotYetValid => matches!(reason, SvidError::NotYetValid { .. }),
        BadSvid::OtherTrustDomain => matches!(reason, SvidError::NoBundleForTrustDomain { .. }),
        BadSvid::TwoUriSans => matches!(reason, SvidError::MultipleUriSans(2)),
        BadSvid::NoUriSan => matches!(reason, SvidError::NoUriSan),
        BadSvid::CaAsLeaf => matches!(reason, SvidError::CaAsLeaf { .. }),
        BadSvid::NoKeyUsage => matches!(reason, SvidError::KeyUsageMissing { .. }),
        BadSvid::UnknownIssuer => matches!(reason, SvidError::UnknownIssuer { .. }),
        other => panic!("no expectation for {other:?}"),
    }
}

#[tokio::test]
async fn each_bad_client_certificate_is_refused_with_its_reason() {
    for bad in BAD_KINDS {
        let err = server_refusal(bad).await;
        let reason = svid_refusal(&err).unwrap_or_else(|| panic!("{bad:?}: not ours: {err:?}"));
        assert!(
            is_reason_for(bad, reason),
            "{bad:?} refused for the wrong reason: {reason:?}"
        );
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let err = {
        let ca = TestCa::new("bank.example");
        let server_cfg = TlsProfile::new(ca.rotating(SERVER))
            .server_config()
            .unwrap();
        let mut server = TestServer::start(server_cfg, Reply::Echo).await;
        let client_cfg = dangerous_client_config_presenting(None, ca.bundle_set()).unwrap();
        if let Ok(mut tls) = connect(client_cfg, server.addr).await {
            assert!(round_trip(&mut tls, "anonymous").await.is_err());
        }
        server
            .next_handshake()
            .await
            .expect_err("anonymous client accepted")
    };
    assert!(
        matches!(
            tls_error(&err),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients_without_identity() {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating("/meshguard/ca"))
        .client_auth(ClientAuth::Optional)
        .server_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;

    let anonymous = TlsProfile::without_identity(ca.bundle_set())
        .client_config()
        .unwrap();
    let mut tls = connect(anonymous, server.addr).await.unwrap();
    round_trip(&mut tls, "token please").await.unwrap();
    let accepted = server.next_handshake().await.unwrap();
    assert!(
        accepted
            .peer
            .unwrap_err()
            .contains("no verified peer certificate")
    );

    // A certificate that is presented must still be valid.
    let issued = ca.issue_bad(BadSvid::Expired, CLIENT);
    let bad =
        dangerous_client_config_presenting(Some(issued.cert_and_key()), ca.bundle_set()).unwrap();
    if let Ok(mut tls) = connect(bad, server.addr).await {
        assert!(round_trip(&mut tls, "expired").await.is_err());
    }
    let err = server
        .next_handshake()
        .await
        .expect_err("expired client accepted");
    let reason = svid_refusal(tls_error(&err).unwrap()).unwrap();
    assert!(matches!(reason, SvidError::Expired { .. }), "{reason:?}");
}

#[tokio::test]
async fn each_bad_server_certificate_is_refused_by_the_client_with_its_reason() {
    let ca = TestCa::new("bank.example");
    for bad in BAD_KINDS {
        let issued = ca.issue_bad(bad, SERVER);
        let (chain, key) = issued.cert_and_key();
        let server_cfg = dangerous_server_config_presenting(chain, key, ca.bundle_set()).unwrap();
        let server = TestServer::start(server_cfg, Reply::Echo).await;
        let client_cfg = TlsProfile::new(ca.rotating(CLIENT))
            .client_config()
            .unwrap();
        let err = connect(client_cfg, server.addr)
            .await
            .expect_err("bad server accepted");
        let tls = tls_error(&err).unwrap();
        let reason = svid_refusal(tls).unwrap_or_else(|| panic!("{bad:?}: not ours: {tls:?}"));
        assert!(
            is_reason_for(bad, reason),
            "{bad:?} refused for the wrong reason: {reason:?}"
        );
    }
}

#[tokio::test]
async fn unexpected_server_identity_names_expected_and_presented() {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating("/ns/web/sa/web"))
        .server_config()
        .unwrap();
    let server = TestServer::start(server_cfg, Reply::Echo).await;
    let expected =
        ExpectedIdentities::parse(&["spiffe://bank.example/ns/ledger/sa/ledger"]).unwrap();
    let client_cfg = TlsProfile::new(ca.rotating(CLIENT))
        .expect(expected)
        .client_config()
        .unwrap();

    let err = connect(client_cfg, server.addr)
        .await
        .expect_err("unexpected server accepted");
    let reason = refusal_reason(tls_error(&err).unwrap()).unwrap();
    let reason = reason.downcast_ref::<IdentityError>().unwrap();
    let text = reason.to_string();
    assert!(
        matches!(reason, IdentityError::UnexpectedPeer { .. }),
        "{reason:?}"
    );
    assert!(
        text.contains("spiffe://bank.example/ns/ledger/sa/ledger"),
        "{text}"
    );
    assert!(
        text.contains("spiffe://bank.example/ns/web/sa/web"),
        "{text}"
    );

    // The same client accepts the server it expects.
    let right = TestServer::start(
        TlsProfile::new(ca.rotating(SERVER))
            .server_config()
            .unwrap(),
        Reply::Echo,
    )
    .await;
    let client_cfg = TlsProfile::new(ca.rotating(CLIENT))
        .expect(ExpectedIdentities::parse(&["spiffe://bank.example/ns/ledger/*"]).unwrap())
        .client_config()
        .unwrap();
    assert!(connect(client_cfg, right.addr).await.is_ok());
}

#[tokio::test]
async fn server_without_identity_cannot_be_built() {
    let ca = TestCa::new("bank.example");
    let err = TlsProfile::without_identity(ca.bundle_set())
        .server_config()
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::ServerWithoutIdentity),
        "{err:?}"
    );
}

#[tokio::test]
async fn mtls_with_svids_from_an_intermediate_ca() {
    let root = TestCa::new("bank.example");
    let issuing = root.intermediate("bank.example issuing CA");
    let server_cfg = TlsProfile::new(issuing.rotating(SERVER))
        .server_config()
        .unwrap();
    let client_cfg = TlsProfile::new(issuing.rotating(CLIENT))
        .client_config()
        .unwrap();
    let mut server = TestServer::start(server_cfg, Reply::Echo).await;
    let mut tls = connect(client_cfg, server.addr).await.unwrap();
    // The server sent its leaf and the intermediate; the client trusts only the root.
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap().len(), 2);
    round_trip(&mut tls, "via intermediate").await.unwrap();
    assert_eq!(
        server
            .next_handshake()
            .await
            .unwrap()
            .peer
            .unwrap()
            .as_str(),
        "spiffe://bank.example/ns/payments/sa/payments"
    );
}
