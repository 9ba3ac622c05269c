//! The validation core against real certificates from the test CA: every bad kind of certificate
//! is refused with its own specific error, and the time is an input.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, SystemTime};

use meshguard_identity::test_ca::{BadSvid, SvidSpec, TestCa};
use meshguard_identity::{BundleSet, SpiffeId, SvidError, X509Svid, unix_time, validate_svid};

const PATH: &str = "/ns/payments/sa/payments";

fn now() -> rustls::pki_types::UnixTime {
    unix_time(SystemTime::now())
}

fn refuse(ca: &TestCa, bad: BadSvid) -> SvidError {
    let issued = ca.issue_bad(bad, PATH);
    validate_svid(&issued.chain, &ca.bundle_set(), now()).expect_err("bad SVID accepted")
}

#[test]
fn good_svid_is_accepted_with_its_id() {
    let ca = TestCa::new("bank.example");
    let issued = ca.issue(PATH);
    let id = validate_svid(&issued.chain, &ca.bundle_set(), now()).unwrap();
    assert_eq!(id.as_str(), "spiffe://bank.example/ns/payments/sa/payments");
}

#[test]
fn expired() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::Expired);
    assert!(matches!(err, SvidError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("expired at"), "{err}");
    assert_eq!(err.label(), "expired");
    assert_eq!(
        err.presented().unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments"
    );
}

#[test]
fn not_yet_valid() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::NotYetValid);
    assert!(matches!(err, SvidError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn other_trust_domain() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::OtherTrustDomain);
    match err {
        SvidError::NoBundleForTrustDomain { presented, known } => {
            assert_eq!(presented.trust_domain_str(), "other.example");
            assert_eq!(known.len(), 1);
            assert_eq!(known[0].as_str(), "bank.example");
        }
        other => panic!("wrong error: {other:?}"),
    }
}

#[test]
fn two_uri_sans() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::TwoUriSans);
    assert_eq!(err, SvidError::MultipleUriSans(2));
}

#[test]
fn no_uri_san() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::NoUriSan);
    assert_eq!(err, SvidError::NoUriSan);
    assert_eq!(err.presented(), None);
}

#[test]
fn ca_certificate_as_leaf() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::CaAsLeaf);
    assert!(matches!(err, SvidError::CaAsLeaf { .. }), "{err:?}");
}

#[test]
fn missing_key_usage() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::NoKeyUsage);
    assert!(matches!(err, SvidError::KeyUsageMissing { .. }), "{err:?}");
}

#[test]
fn key_usage_not_critical() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::KeyUsageNotCritical);
    assert!(
        matches!(err, SvidError::KeyUsageNotCritical { .. }),
        "{err:?}"
    );
}

#[test]
fn leaf_with_key_cert_sign() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::KeyCertSign);
    assert!(matches!(err, SvidError::KeyCertSign { .. }), "{err:?}");
}

#[test]
fn leaf_without_digital_signature() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::NoDigitalSignature);
    assert!(
        matches!(err, SvidError::MissingDigitalSignature { .. }),
        "{err:?}"
    );
}

#[test]
fn eku_without_client_auth() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::EkuServerAuthOnly);
    assert!(
        matches!(
            err,
            SvidError::EkuMissingServerOrClientAuth {
                missing: "clientAuth",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_issuer() {
    let err = refuse(&TestCa::new("bank.example"), BadSvid::UnknownIssuer);
    match err {
        SvidError::UnknownIssuer { presented } => {
            assert_eq!(
                presented.as_str(),
                "spiffe://bank.example/ns/payments/sa/payments"
            );
        }
        other => panic!("wrong error: {other:?}"),
    }
    // An impostor CA with the same name as our root but another key.
    let ca = TestCa::new("bank.example");
    let impostor = TestCa::new("bank.example").issue(PATH);
    let err = validate_svid(&impostor.chain, &ca.bundle_set(), now()).unwrap_err();
    assert!(matches!(err, SvidError::UnknownIssuer { .. }), "{err:?}");
}

#[test]
fn empty_chain() {
    let ca = TestCa::new("bank.example");
    let err = validate_svid(&[], &ca.bundle_set(), now()).unwrap_err();
    assert_eq!(err, SvidError::EmptyChain);
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let ca = TestCa::new("bank.example");
    let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]);
    let err = validate_svid(&[garbage], &ca.bundle_set(), now()).unwrap_err();
    assert!(matches!(err, SvidError::Malformed { .. }), "{err:?}");
}

#[test]
fn time_is_an_input() {
    let ca = TestCa::new("bank.example");
    let start = SystemTime::now();
    let spec = SvidSpec::new(PATH).valid(start, start + Duration::from_secs(600));
    let issued = ca.issue_with(&spec);
    let bundles = ca.bundle_set();
    let inside = unix_time(start + Duration::from_secs(300));
    let before = unix_time(start - Duration::from_secs(1));
    let after = unix_time(start + Duration::from_secs(601));
    assert!(validate_svid(&issued.chain, &bundles, inside).is_ok());
    assert!(matches!(
        validate_svid(&issued.chain, &bundles, before),
        Err(SvidError::NotYetValid { .. })
    ));
    assert!(matches!(
        validate_svid(&issued.chain, &bundles, after),
        Err(SvidError::Expired { .. })
    ));
}

#[test]
fn federation_keeps_trust_domains_apart() {
    let bank = TestCa::new("bank.example");
    let partner = TestCa::new("partner.example");
    let bundles = BundleSet::from_bundles([bank.bundle(), partner.bundle()]).unwrap();

    // Each peer validates against its own trust domain's bundle.
    let ours = bank.issue(PATH);
    let theirs = partner.issue("/ns/settlement/sa/api");
    assert_eq!(
        validate_svid(&theirs.chain, &bundles, now())
            .unwrap()
            .trust_domain_str(),
        "partner.example"
    );
    assert!(validate_svid(&ours.chain, &bundles, now()).is_ok());

    // The partner's CA cannot vouch for an ID in our trust domain, although we trust that CA.
    let forged = partner.issue_claiming("spiffe://bank.example/ns/payments/sa/payments");
    let err = validate_svid(&forged.chain, &bundles, now()).unwrap_err();
    assert!(matches!(err, SvidError::UnknownIssuer { .. }), "{err:?}");

    // A duplicate trust domain is refused, never merged.
    assert!(
        BundleSet::from_bundles([bank.bundle(), TestCa::new("bank.example").bundle()]).is_err()
    );
}

#[test]
fn svid_key_must_match_leaf() {
    let ca = TestCa::new("bank.example");
    let a = ca.issue(PATH);
    let b = ca.issue(PATH);
    let err = X509Svid::from_der(a.chain.clone(), b.key.clone_key()).unwrap_err();
    assert!(
        matches!(
            err,
            meshguard_identity::IdentityError::Svid(SvidError::KeyMismatch { .. })
        ),
        "{err:?}"
    );
    let svid = X509Svid::from_pem(a.chain_pem.as_bytes(), a.key_pem.as_bytes()).unwrap();
    assert_eq!(
        svid.spiffe_id(),
        &SpiffeId::parse("spiffe://bank.example/ns/payments/sa/payments").unwrap()
    );
}

#[test]
fn svid_debug_never_prints_the_key() {
    let ca = TestCa::new("bank.example");
    let issued = ca.issue(PATH);
    let svid = issued.to_svid().unwrap();
    let shown = format!("{svid:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let key_body: String = issued.key_pem.lines().nth(1).unwrap().to_owned();
    assert!(!shown.contains(&key_body), "{shown}");
}

#[test]
fn missing_key_is_a_clear_error() {
    let ca = TestCa::new("bank.example");
    let issued = ca.issue(PATH);
    let err = X509Svid::from_pem(issued.chain_pem.as_bytes(), b"").unwrap_err();
    assert!(
        matches!(err, meshguard_identity::IdentityError::NoPrivateKey),
        "{err:?}"
    );
}

#[test]
fn chain_through_an_intermediate() {
    let root = TestCa::new("bank.example");
    let intermediate = root.intermediate("bank.example issuing CA 1");
    let issued = intermediate.issue(PATH);
    assert_eq!(issued.chain.len(), 2);
    let bundles = root.bundle_set();
    assert_eq!(intermediate.bundle_set(), bundles);
    assert!(validate_svid(&issued.chain, &bundles, now()).is_ok());
    // The PEM chain round-trips leaf first, intermediate second.
    let svid = X509Svid::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    assert_eq!(svid.chain(), issued.chain.as_slice());

    // Without the intermediate the leaf does not chain to the root.
    let err = validate_svid(&issued.chain[..1], &bundles, now()).unwrap_err();
    assert!(matches!(err, SvidError::UnknownIssuer { .. }), "{err:?}");
}
