//! A stolen SVID does not renew forever: revoked by serial or by identity it is refused (and the
//! refusal is in the audit trail), the revocation is published for sidecars, and a chain of
//! renewals ends at the CA's `max_renewal_chain` however often it was renewed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use meshguard_ca::audit::{Event, Outcome};
use meshguard_ca::issue::TtlPolicy;
use meshguard_ca::revocation::{Target, revoke};
use meshguard_ca::{Authority, CaError, InitOptions, Refusal};
use meshguard_identity::SpiffeId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const ID: &str = "spiffe://bank.example/ns/payments/sa/payments";

fn init(dir: &Path, extra_config: &str) -> Authority {
    let state = dir.join("state");
    Authority::init(
        &state,
        InitOptions {
            root_ttl: Duration::from_secs(30 * 86400),
            ttl: TtlPolicy {
                default_ttl: Duration::from_secs(3 * 3600),
                max_ttl: Duration::from_secs(24 * 3600),
            },
            ..support::software_ca_options(dir)
        },
        SystemTime::now() - Duration::from_secs(86400),
    )
    .unwrap();
    let config = state.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra_config);
    std::fs::write(&config, text).unwrap();
    Authority::open(&state, None).unwrap()
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(ID.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Renews with the SVID in `pem` at `now`: the new SVID's PEM and serial, or the refusal.
fn renew(ca: &Authority, pem: &str, now: SystemTime) -> Result<(String, String), Refusal> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let client = ca.client_cert(&chain, now);
    match ca.renew(Some(&client), csr().as_bytes(), "127.0.0.1:1", now) {
        Ok(issued) => Ok((issued.pem(), issued.serial)),
        Err(CaError::Refused(refusal)) => Err(refusal),
        Err(other) => panic!("renewal failed: {other}"),
    }
}

#[test]
fn revoked_serials_and_identities_are_refused_audited_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path(), "");
    let id = SpiffeId::parse(ID).unwrap();
    let now = SystemTime::now();
    let (stolen, _key) = ca.issue_local(&id, &[], None, "test", now).unwrap();
    let (renewed, renewed_serial) = renew(&ca, &stolen.pem(), now).unwrap();

    let state = ca.state().clone();
    let serials = revoke(
        &state,
        ca.audit(),
        &Target::Serial(stolen.serial.to_ascii_lowercase()),
        "INC-7: laptop stolen",
        now,
    )
    .unwrap();
    assert_eq!(
        serials,
        std::slice::from_ref(&stolen.serial),
        "any case names the serial"
    );
    let refused = renew(&ca, &stolen.pem(), now).unwrap_err();
    assert_eq!(refused.code(), "revoked");
    assert!(refused.to_string().contains("INC-7"), "{refused}");
    // The refusal is in the trail, naming the certificate presented.
    let records = ca.audit().records().unwrap();
    let last = &records.last().unwrap().entry;
    assert_eq!((last.event, last.outcome), (Event::Renew, Outcome::Refused));
    assert_eq!(last.renewed_from.as_ref(), Some(&stolen.serial));
    assert!(
        last.reason.as_ref().unwrap().starts_with("revoked: "),
        "{last:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.entry.event == Event::Revoke
                && r.entry.serial.as_ref() == Some(&stolen.serial)),
        "the revocation itself is audited"
    );
    // Another certificate of the same identity is not affected by a serial revocation...
    let (renewed_again, _) = renew(&ca, &renewed, now).unwrap();

    // ... but is by revoking the identity, which also publishes every one of its serials.
    let by_id = revoke(
        &state,
        ca.audit(),
        &Target::SpiffeId(id.clone()),
        "INC-8",
        now,
    )
    .unwrap();
    assert!(by_id.contains(&renewed_serial), "{by_id:?}");
    assert_eq!(
        renew(&ca, &renewed_again, now).unwrap_err().code(),
        "revoked"
    );
    let published = ca.published_revocations().unwrap();
    assert!(published.serials.contains(&stolen.serial));
    assert!(published.serials.contains(&renewed_serial));
    // A fresh bootstrap (here: the operator) after the revocation renews again.
    let later = now + Duration::from_secs(120);
    let (fresh, _key) = ca.issue_local(&id, &[], None, "test", later).unwrap();
    assert!(renew(&ca, &fresh.pem(), later).is_ok());
    // A revocation needs a reason.
    assert!(revoke(&state, ca.audit(), &Target::SpiffeId(id), " ", now).is_err());
}

#[test]
fn a_renewal_chain_ends_at_its_maximum_age_however_often_it_was_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path(), "max_renewal_chain = \"2h\"\n");
    let id = SpiffeId::parse(ID).unwrap();
    let start = SystemTime::now() - Duration::from_secs(3 * 3600);
    let (first, _key) = ca.issue_local(&id, &[], None, "test", start).unwrap();
    // Renewed each hour: the chain start is inherited, not reset.
    let hour = Duration::from_secs(3600);
    let (second, _) = renew(&ca, &first.pem(), start + hour).unwrap();
    let (third, _) = renew(&ca, &second, start + hour * 2 - Duration::from_secs(60)).unwrap();
    let refused = renew(&ca, &third, start + hour * 2 + Duration::from_secs(60)).unwrap_err();
    assert_eq!(refused.code(), "renewal_chain_too_old");
    assert!(refused.to_string().contains("bootstrap again"), "{refused}");
    // A CA reopened from its state (the index rebuilt from the trail) refuses it too.
    let reopened = Authority::open(ca.state().root(), None).unwrap();
    let refused = renew(
        &reopened,
        &third,
        start + hour * 2 + Duration::from_secs(60),
    )
    .unwrap_err();
    assert_eq!(refused.code(), "renewal_chain_too_old");
}
