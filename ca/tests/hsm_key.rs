//! The CA key in a real SoftHSM2 token: generated inside, attributes read back, signatures that
//! verify, each fault named, and recovery without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ED25519, UnparsedPublicKey,
};
use meshguard_ca::key::{KeyAlgorithm, KeyUri, OpenOptions, Pkcs11Key, SigningKey};
use meshguard_ca::{CaError, HsmFault};
use support::{SoftHsm, child_env, run_child};

fn create(algorithm: KeyAlgorithm) -> OpenOptions {
    OpenOptions {
        create: true,
        use_existing: false,
        algorithm,
        pin_from_env: None,
    }
}

fn pkcs11(uri: &str) -> meshguard_ca::key::Pkcs11Uri {
    match uri.parse::<KeyUri>().unwrap() {
        KeyUri::Pkcs11(p) => p,
        KeyUri::File(_) => panic!("not a pkcs11 uri"),
    }
}

#[test]
fn generated_keys_stay_in_the_token_and_sign() {
    let Some(hsm) = SoftHsm::new("keys") else {
        return;
    };
    run_child("child_generated_keys", &hsm, &[]);
}

#[test]
#[ignore = "run by generated_keys_stay_in_the_token_and_sign in a child process"]
fn child_generated_keys() {
    let uri = pkcs11(&child_env("MESHGUARD_TEST_URI"));
    for (object, algorithm) in [
        ("p256", KeyAlgorithm::EcdsaP256),
        ("p384", KeyAlgorithm::EcdsaP384),
        ("ed", KeyAlgorithm::Ed25519),
    ] {
        let uri = meshguard_ca::key::Pkcs11Uri {
            object: object.into(),
            ..uri.clone()
        };
        let key = Pkcs11Key::open(&uri, &create(algorithm)).unwrap();
        assert_eq!(key.algorithm(), algorithm);
        let attrs = key.private_key_attributes().unwrap();
        assert!(attrs.sensitive && attrs.always_sensitive, "{attrs:?}");
        assert!(!attrs.extractable && attrs.never_extractable, "{attrs:?}");
        assert!(
            attrs.local && attrs.token && attrs.sign && !attrs.decrypt,
            "{attrs:?}"
        );
        let verify_alg: &dyn aws_lc_rs::signature::VerificationAlgorithm = match algorithm {
            KeyAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
            _ => &ED25519,
        };
        for i in 0..50u32 {
            let msg = format!("message {i}");
            let sig = key.sign(msg.as_bytes()).unwrap();
            UnparsedPublicKey::new(verify_alg, key.public_key_raw())
                .verify(msg.as_bytes(), &sig)
                .unwrap();
        }
        // Creating it again is refused; opening it again finds the same key by label.
        assert!(matches!(
            Pkcs11Key::open(&uri, &create(algorithm)),
            Err(CaError::KeyExists { .. })
        ));
        let again = Pkcs11Key::open(&uri, &OpenOptions::default()).unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
    }
}

#[test]
fn each_fault_is_named() {
    let Some(hsm) = SoftHsm::new("faults") else {
        return;
    };
    run_child("child_faults", &hsm, &[]);
}

#[test]
#[ignore = "run by each_fault_is_named in a child process"]
fn child_faults() {
    let uri = pkcs11(&child_env("MESHGUARD_TEST_URI"));
    let err = |r: Result<Pkcs11Key, CaError>| r.unwrap_err();

    let missing_module = meshguard_ca::key::Pkcs11Uri {
        module_path: "/nonexistent/libp11.so".into(),
        ..uri.clone()
    };
    let e = err(Pkcs11Key::open(&missing_module, &OpenOptions::default()));
    assert!(
        matches!(e, CaError::HsmUnavailable(HsmFault::ModuleMissing { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("module-path"), "{e}");

    let missing_token = meshguard_ca::key::Pkcs11Uri {
        token: "no-such-token".into(),
        ..uri.clone()
    };
    let e = err(Pkcs11Key::open(&missing_token, &OpenOptions::default()));
    assert!(
        matches!(e, CaError::HsmUnavailable(HsmFault::TokenMissing { .. })),
        "{e}"
    );

    let missing_key = meshguard_ca::key::Pkcs11Uri {
        object: "nothing-here".into(),
        ..uri.clone()
    };
    let e = err(Pkcs11Key::open(&missing_key, &OpenOptions::default()));
    assert!(
        matches!(e, CaError::HsmUnavailable(HsmFault::KeyMissing { .. })),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let wrong_pin_file = dir.path().join("pin");
    std::fs::write(&wrong_pin_file, "000000").unwrap();
    let wrong_pin = meshguard_ca::key::Pkcs11Uri {
        pin_source: Some(wrong_pin_file),
        ..uri.clone()
    };
    let e = err(Pkcs11Key::open(
        &wrong_pin,
        &create(KeyAlgorithm::EcdsaP256),
    ));
    assert!(
        matches!(e, CaError::HsmUnavailable(HsmFault::WrongPin { .. })),
        "{e}"
    );
    assert!(!e.to_string().contains("000000"));

    let no_pin = meshguard_ca::key::Pkcs11Uri {
        pin_source: None,
        ..uri.clone()
    };
    assert!(matches!(
        err(Pkcs11Key::open(&no_pin, &OpenOptions::default())),
        CaError::PinMissing
    ));
}

#[test]
fn signing_recovers_after_the_hsm_comes_back() {
    let Some(hsm) = SoftHsm::new("recover") else {
        return;
    };
    run_child("child_recovers", &hsm, &[]);
}

#[test]
#[ignore = "run by signing_recovers_after_the_hsm_comes_back in a child process"]
fn child_recovers() {
    let uri = pkcs11(&child_env("MESHGUARD_TEST_URI"));
    let tokens = std::path::PathBuf::from(child_env("MESHGUARD_TEST_TOKENS"));
    let key = Arc::new(Pkcs11Key::open(&uri, &create(KeyAlgorithm::EcdsaP256)).unwrap());
    key.sign(b"before").unwrap();

    // Session lost: another handle on the same module logs the application out of the token.
    support::logout_everyone(&uri);
    key.sign(b"after logout")
        .expect("the key logs in again by itself");

    // The HSM goes away: its token directory disappears.
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).unwrap();
    support::logout_everyone(&uri);
    let e = key.sign(b"while away").unwrap_err();
    assert!(matches!(e, CaError::HsmUnavailable(_)), "{e}");
    assert!(e.to_string().starts_with("HSM unavailable"), "{e}");
    assert!(key.unavailable().is_some());
    eprintln!("while away: {e}");

    // It comes back: signing resumes with no restart (retries are paced, so poll briefly).
    std::fs::rename(&away, &tokens).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match key.sign(b"back") {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("signing did not resume: {e}"),
        }
    }
    assert!(key.unavailable().is_none());
}
