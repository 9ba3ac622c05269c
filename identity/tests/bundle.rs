//! Trust bundles: PEM and SPIFFE JWK Set, read and written, with clear errors on bad input.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use meshguard_identity::test_ca::TestCa;
use meshguard_identity::{IdentityError, TrustBundle, TrustDomain};

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

#[test]
fn pem_round_trip() {
    let ca = TestCa::new("bank.example");
    let pem = ca.bundle_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    let bundle = TrustBundle::from_pem(td("bank.example"), pem.as_bytes()).unwrap();
    assert_eq!(bundle.roots(), &[ca.root_der().clone()]);
    assert_eq!(bundle.to_pem(), pem);
}

#[test]
fn pem_with_two_roots_keeps_both() {
    let a = TestCa::new("bank.example");
    let b = TestCa::new("bank.example");
    let pem = format!("{}{}", a.bundle_pem(), b.bundle_pem());
    let bundle = TrustBundle::from_pem(td("bank.example"), pem.as_bytes()).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.anchors().len(), 2);
}

#[test]
fn spiffe_json_round_trip_with_sequence() {
    let ca = TestCa::new("bank.example");
    let bundle = ca.bundle().with_sequence(7).with_refresh_hint(300);
    let json = bundle.to_spiffe_json().unwrap();

    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["spiffe_sequence"], 7);
    assert_eq!(value["spiffe_refresh_hint"], 300);
    let key = &value["keys"][0];
    assert_eq!(key["use"], "x509-svid");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    // P-256 coordinates are 32 bytes: 43 base64url characters without padding.
    assert_eq!(key["x"].as_str().unwrap().len(), 43);
    assert_eq!(key["y"].as_str().unwrap().len(), 43);
    assert_eq!(key["x5c"].as_array().unwrap().len(), 1);

    let back = TrustBundle::from_spiffe_json(td("bank.example"), json.as_bytes()).unwrap();
    assert_eq!(back, bundle);
}

#[test]
fn spiffe_json_skips_jwt_keys_and_ignores_unknown_members() {
    let ca = TestCa::new("bank.example");
    let x509 = ca.bundle().to_spiffe_json().unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&x509).unwrap();
    let keys = value["keys"].as_array_mut().unwrap();
    keys.push(serde_json::json!({
        "use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"
    }));
    keys[0]["kid"] = serde_json::json!("ignored-member");
    let bundle =
        TrustBundle::from_spiffe_json(td("bank.example"), value.to_string().as_bytes()).unwrap();
    assert_eq!(bundle.roots().len(), 1);
    assert_eq!(bundle.sequence(), None);
}

#[test]
fn bad_bundles_say_what_is_wrong() {
    let err = TrustBundle::from_pem(td("bank.example"), b"not pem at all").unwrap_err();
    assert!(
        matches!(err, IdentityError::NoCertificate { .. }),
        "{err:?}"
    );

    let err = TrustBundle::from_spiffe_json(td("bank.example"), b"{\"keys\": 3}").unwrap_err();
    assert!(matches!(err, IdentityError::BundleJson { .. }), "{err:?}");
    assert!(err.to_string().contains("bank.example"), "{err}");

    let err = TrustBundle::from_spiffe_json(td("bank.example"), b"{\"keys\": []}").unwrap_err();
    assert!(err.to_string().contains("x509-svid"), "{err}");

    let two = r#"{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AA==","AA=="]}]}"#;
    let err = TrustBundle::from_spiffe_json(td("bank.example"), two.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("exactly one certificate"), "{err}");

    let junk = r#"{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}]}"#;
    let err = TrustBundle::from_spiffe_json(td("bank.example"), junk.as_bytes()).unwrap_err();
    assert!(
        matches!(err, IdentityError::BadRoot { index: 0, .. }),
        "{err:?}"
    );

    let err = TrustBundle::new(td("bank.example"), vec![]).unwrap_err();
    assert!(matches!(err, IdentityError::EmptyBundle { .. }), "{err:?}");
}

/// Found by `fuzz/fuzz_targets/bundle_jwks.rs`: a root whose SubjectPublicKeyInfo names an
/// algorithm nobody implements was accepted (webpki does not look at it) and only failed when the
/// bundle was published again as a JWK Set. It is refused on the way in, from either format.
#[test]
fn a_root_with_an_unknown_key_algorithm_is_refused_on_the_way_in() {
    use base64::Engine;
    let ca = TestCa::new("bank.example");
    let mut der = ca.root_der().to_vec();
    // id-ecPublicKey, 1.2.840.10045.2.1, becomes 1.2.840.10045.27.1.
    let oid = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    let at = der.windows(oid.len()).position(|w| w == oid).unwrap();
    der[at + 7] = 0x1B;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let json = format!(r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{b64}"]}}]}}"#);
    let err = TrustBundle::from_spiffe_json(td("bank.example"), json.as_bytes()).unwrap_err();
    assert!(
        matches!(err, IdentityError::UnsupportedRootKey { index: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("use an EC (P-256, P-384 or P-521), RSA or Ed25519 root")
    );
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let err = TrustBundle::from_pem(td("bank.example"), pem.as_bytes()).unwrap_err();
    assert!(
        matches!(err, IdentityError::UnsupportedRootKey { .. }),
        "{err:?}"
    );
}

/// Refusing keys without a JWK form must not refuse roots rustls can verify: a P-521 root (a
/// curve some enterprise PKIs and SPIRE upstream authorities use) loads and round-trips.
#[test]
fn a_p521_root_loads_and_round_trips_as_a_jwk_set() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).unwrap();
    let bundle = TrustBundle::from_pem(td("bank.example"), root.pem().as_bytes()).unwrap();
    let json = bundle.to_spiffe_json().unwrap();
    assert!(json.contains("\"P-521\""), "{json}");
    let again = TrustBundle::from_spiffe_json(td("bank.example"), json.as_bytes()).unwrap();
    assert_eq!(again.roots(), bundle.roots());
}
