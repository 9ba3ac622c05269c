//! Issued SVIDs conform to the X509-SVID spec and pass three validators nobody here wrote alone:
//! `openssl verify -x509_strict -check_ss_sig`, rustls-webpki (through identity's validate_svid) and
//! the `spiffe` crate's parser; and each refused request is refused with its reason and audited.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use meshguard_ca::audit::{self, Outcome};
use meshguard_ca::issue::TtlPolicy;
use meshguard_ca::key::{KeyAlgorithm, KeyUri};
use meshguard_ca::{Authority, CaError, InitOptions, Refusal, Secret};
use meshguard_identity::{BundleSet, SpiffeId, TrustDomain, unix_time, validate_svid};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::{SoftHsm, child_env, run_child};

fn init(dir: &Path, key: &str) -> Authority {
    Authority::init(
        &dir.join("state"),
        InitOptions {
            trust_domain: TrustDomain::parse("bank.example").unwrap(),
            key: key.parse::<KeyUri>().unwrap(),
            algorithm: KeyAlgorithm::EcdsaP256,
            use_existing_key: false,
            root_ttl: Duration::from_secs(86400 * 365),
            root_spiffe_id: Some(SpiffeId::parse("spiffe://bank.example").unwrap()),
            ttl: TtlPolicy {
                default_ttl: Duration::from_secs(3600),
                max_ttl: Duration::from_secs(7200),
            },
            pin_from_env: None,
        },
        SystemTime::now(),
    )
    .unwrap()
}

fn csr_for(id: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

/// Issues to a directory and runs every validator over the result.
fn check_issuance(ca: &Authority, dir: &Path) {
    let id = SpiffeId::parse("spiffe://bank.example/ns/payments/sa/payments").unwrap();
    let out = dir.join("out");
    let now = SystemTime::now();
    let issued = ca
        .issue_to_dir(&id, &["payments.bank.example".to_owned()], None, &out, now)
        .unwrap();

    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-check_ss_sig", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let chain_pem = std::fs::read(out.join("svid.pem")).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .map(Result::unwrap)
        .collect();
    let bundles = BundleSet::single(ca.bundle().clone());
    assert_eq!(validate_svid(&chain, &bundles, unix_time(now)).unwrap(), id);
    // Still valid within skew before issuance (backdated), and invalid after expiry.
    assert!(validate_svid(&chain, &bundles, unix_time(now - Duration::from_secs(30))).is_ok());
    assert!(validate_svid(&chain, &bundles, unix_time(now + Duration::from_secs(3700))).is_err());

    let key_der = PrivateKeyDer::from_pem_file(out.join("svid.key")).unwrap();
    let svid = spiffe::X509Svid::parse_from_der(chain[0].as_ref(), key_der.secret_der()).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id.as_str());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(out.join("svid.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    let uris = san
        .general_names
        .iter()
        .filter(|n| matches!(n, x509_parser::extensions::GeneralName::URI(_)))
        .count();
    assert_eq!(uris, 1);
    // DER adds a zero octet when the top bit is set; the value itself is 128 random bits.
    let serial = leaf.raw_serial();
    let serial = serial.strip_prefix(&[0u8]).unwrap_or(serial);
    assert_eq!(serial.len(), 16, "128-bit serial");
    assert_eq!(issued.serial, hex::encode_upper(serial));
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3650..=3670).contains(&lifetime),
        "1 h plus the backdating, got {lifetime}s"
    );

    // Two issuances never share a serial.
    let again = ca
        .issue_to_dir(&id, &[], None, &dir.join("out2"), now)
        .unwrap();
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn software_key_chains_pass_openssl_webpki_and_spiffe() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(
        dir.path(),
        &format!("file:{}", dir.path().join("root.key").display()),
    );
    let status = ca.status().unwrap();
    assert!(status.key_location.contains("DEVELOPMENT ONLY"));
    check_issuance(&ca, dir.path());
}

#[test]
fn hsm_key_chains_pass_openssl_webpki_and_spiffe() {
    let Some(hsm) = SoftHsm::new("issuance") else {
        return;
    };
    run_child("child_hsm_issuance", &hsm, &[]);
}

#[test]
#[ignore = "run by hsm_key_chains_pass_openssl_webpki_and_spiffe in a child process"]
fn child_hsm_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path(), &child_env("MESHGUARD_TEST_URI"));
    check_issuance(&ca, dir.path());
}

#[test]
fn refusals_carry_their_reason_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(
        dir.path(),
        &format!("file:{}", dir.path().join("root.key").display()),
    );
    let now = SystemTime::now();
    let id = SpiffeId::parse("spiffe://bank.example/ns/a").unwrap();
    let refused = |r: Result<meshguard_ca::issue::Issued, CaError>| match r {
        Err(CaError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // A token for one ID cannot buy another.
    let token = ca
        .tokens()
        .create(&id, Duration::from_secs(600), now)
        .unwrap();
    let (other_csr, _) = csr_for("spiffe://bank.example/ns/b");
    assert!(matches!(
        refused(ca.sign_with_token(&token, other_csr.as_bytes(), "test", now)),
        Refusal::IdMismatch { .. }
    ));
    // The right ID works once; the replay is refused.
    let (csr, key) = csr_for(id.as_str());
    let issued = ca
        .sign_with_token(&token, csr.as_bytes(), "test", now)
        .unwrap();
    assert_eq!(issued.spiffe_id, id);
    assert_eq!(
        refused(ca.sign_with_token(&token, csr.as_bytes(), "test", now)),
        Refusal::TokenUsed
    );
    // Expired and unknown tokens.
    let short = ca
        .tokens()
        .create(&id, Duration::from_secs(1), now)
        .unwrap();
    assert!(matches!(
        refused(ca.sign_with_token(&short, csr.as_bytes(), "test", now + Duration::from_secs(5))),
        Refusal::TokenExpired { .. }
    ));
    assert_eq!(
        refused(ca.sign_with_token(&Secret::new("mgt1.nope"), csr.as_bytes(), "t", now)),
        Refusal::TokenUnknown
    );
    // Malformed CSRs: garbage, and a CSR whose signature does not match its key.
    assert!(matches!(
        refused(ca.sign_with_token(&token, b"not a csr", "t", now)),
        Refusal::MalformedCsr(_)
    ));
    let mut tampered = csr.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    assert!(matches!(
        refused(ca.sign_with_token(&token, &tampered, "t", now)),
        Refusal::MalformedCsr(_)
    ));
    // A CSR outside the trust domain.
    let other_td = ca
        .tokens()
        .create(&id, Duration::from_secs(600), now)
        .unwrap();
    let (foreign_csr, _) = csr_for("spiffe://evil.example/ns/a");
    assert!(matches!(
        refused(ca.sign_with_token(&other_td, foreign_csr.as_bytes(), "t", now)),
        Refusal::IdMismatch { .. }
    ));

    // Renewal: with the current SVID, same ID only; expired, foreign or missing certs are refused.
    let chain = vec![issued.der.clone()];
    let client = ca.client_cert(&chain, now);
    let (renew_csr, _) = csr_for(id.as_str());
    ca.renew(Some(&client), renew_csr.as_bytes(), "t", now)
        .unwrap();
    let (b_csr, _) = csr_for("spiffe://bank.example/ns/b");
    assert!(matches!(
        refused(ca.renew(Some(&client), b_csr.as_bytes(), "t", now)),
        Refusal::IdMismatch { .. }
    ));
    let later = now + Duration::from_secs(3 * 3600);
    // Expired: on a connection opened while it was valid, and on a new connection.
    assert!(matches!(
        refused(ca.renew(Some(&client), renew_csr.as_bytes(), "t", later)),
        Refusal::InvalidClientCertificate(_)
    ));
    let expired = ca.client_cert(&chain, later);
    assert!(matches!(
        refused(ca.renew(Some(&expired), renew_csr.as_bytes(), "t", later)),
        Refusal::InvalidClientCertificate(_)
    ));
    let foreign = meshguard_identity::test_ca::TestCa::new("bank.example").issue("/ns/a");
    let (foreign_chain, _) = foreign.cert_and_key();
    assert!(matches!(
        refused(ca.renew(
            Some(&ca.client_cert(&foreign_chain, now)),
            renew_csr.as_bytes(),
            "t",
            now
        )),
        Refusal::InvalidClientCertificate(_)
    ));
    assert_eq!(
        refused(ca.renew(None, renew_csr.as_bytes(), "t", now)),
        Refusal::NoClientCertificate
    );
    drop(key);

    // Lifetimes beyond the maximum.
    assert!(matches!(
        refused(ca.issuer().issue(
            &rcgen::KeyPair::generate().unwrap(),
            &id,
            &[],
            Some(Duration::from_secs(99999)),
            now
        )),
        Refusal::TtlTooLong { .. }
    ));

    // Everything above is in the trail, refusals with their code, and the trail verifies.
    let records = ca.audit().records().unwrap();
    let codes: Vec<&str> = records
        .iter()
        .filter(|r| r.entry.outcome == Outcome::Refused)
        .filter_map(|r| r.entry.reason.as_deref())
        .map(|reason| reason.split(':').next().unwrap())
        .collect();
    for code in [
        "id_mismatch",
        "token_used",
        "token_expired",
        "token_unknown",
        "malformed_csr",
        "invalid_client_certificate",
        "no_client_certificate",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    assert_eq!(
        audit::verify(&ca.audit_path()).unwrap(),
        Ok(records.len() as u64)
    );
}
