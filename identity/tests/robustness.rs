//! Bad input never panics: arbitrary bytes as PEM, JWK Sets, keys and certificates get errors, and
//! any single-byte change to a valid SVID makes it invalid.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::OnceLock;
use std::time::SystemTime;

use meshguard_identity::test_ca::{IssuedSvid, TestCa};
use meshguard_identity::{BundleSet, TrustBundle, TrustDomain, X509Svid, unix_time, validate_svid};
use proptest::prelude::*;
use rustls::pki_types::CertificateDer;

fn fixture() -> &'static (TestCa, IssuedSvid, BundleSet) {
    static FIXTURE: OnceLock<(TestCa, IssuedSvid, BundleSet)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = TestCa::new("bank.example");
        let issued = ca.issue("/ns/payments/sa/payments");
        let bundles = ca.bundle_set();
        (ca, issued, bundles)
    })
}

fn td() -> TrustDomain {
    TrustDomain::parse("bank.example").unwrap()
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, issued, bundles) = fixture();
        let _ = TrustBundle::from_pem(td(), &bytes);
        let _ = TrustBundle::from_spiffe_json(td(), &bytes);
        let _ = X509Svid::from_pem(&bytes, issued.key_pem.as_bytes());
        let _ = X509Svid::from_pem(issued.chain_pem.as_bytes(), &bytes);
        let now = unix_time(SystemTime::now());
        prop_assert!(validate_svid(&[CertificateDer::from(bytes)], bundles, now).is_err());
    }

    #[test]
    fn any_changed_byte_invalidates_the_svid(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let (_, issued, bundles) = fixture();
        let mut der = issued.chain[0].as_ref().to_vec();
        let i = at.index(der.len());
        der[i] ^= xor;
        let now = unix_time(SystemTime::now());
        prop_assert!(validate_svid(&[CertificateDer::from(der)], bundles, now).is_err());
    }

    #[test]
    fn arbitrary_json_shapes_are_refused(keys in proptest::collection::vec("[a-z0-9+/=]{0,40}", 0..4), seq in any::<u64>()) {
        let x5c: Vec<String> = keys;
        let doc = serde_json::json!({
            "keys": [{"use": "x509-svid", "kty": "EC", "x5c": x5c}],
            "spiffe_sequence": seq,
        });
        prop_assert!(TrustBundle::from_spiffe_json(td(), doc.to_string().as_bytes()).is_err());
    }
}

#[test]
fn the_unchanged_fixture_is_valid() {
    // Guards the mutation test: it must start from a certificate that validates.
    let (_, issued, bundles) = fixture();
    assert!(validate_svid(&issued.chain, bundles, unix_time(SystemTime::now())).is_ok());
}
