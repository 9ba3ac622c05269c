//! The files identity source against real files in a temp dir: a rewritten certificate is picked
//! up, and every kind of broken rewrite keeps the current credentials and says why.

use std::path::Path;
use std::time::Duration;

use meshguard_identity::source::{
    FilesConfig, FilesSource, IdentitySource, IdentityState, IdentityStatus, RunningIdentity,
    SourceError, StartOptions,
};
use meshguard_identity::test_ca::{BadSvid, IssuedSvid, TestCa};
use tokio::sync::watch;

/// Upper bound for the watcher (or the poll fallback) to notice a change; a bound, not a wait.
const NOTICE: Duration = Duration::from_secs(20);

const WORKLOAD: &str = "/ns/ledger/sa/ledger";

fn config(dir: &Path) -> FilesConfig {
    let mut config = FilesConfig::in_dir(dir);
    config.poll_interval = Duration::from_millis(500);
    config.settle = Duration::from_millis(50);
    config
}

/// Replaces a file the way careful writers do: write aside, then rename over it.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, contents).expect("write aside");
    std::fs::rename(&aside, path).expect("rename over");
}

fn write_svid(dir: &Path, svid: &IssuedSvid, bundle_pem: &str) {
    svid.write_to_dir(dir, bundle_pem)
        .expect("write SVID files");
}

async fn start(dir: &Path) -> RunningIdentity {
    let source = FilesSource::new(config(dir)).expect("files source");
    tokio::time::timeout(NOTICE, source.start(StartOptions::default()))
        .await
        .expect("the files source should deliver the first credentials")
}

/// Waits for the next status matching `pred`, bounded by [`NOTICE`].
async fn status_where(
    status: &mut watch::Receiver<IdentityStatus>,
    pred: impl Fn(&IdentityStatus) -> bool,
) -> IdentityStatus {
    let seen = tokio::time::timeout(NOTICE, status.wait_for(|s| pred(s)))
        .await
        .map(|seen| seen.expect("the driver is running").clone());
    match seen {
        Ok(seen) => seen,
        Err(_) => panic!(
            "no matching status within {NOTICE:?}; last: {:?}",
            *status.borrow()
        ),
    }
}

#[tokio::test]
async fn first_credentials_come_from_the_files() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let svid = ca.issue(WORKLOAD);
    write_svid(dir.path(), &svid, &ca.bundle_pem());

    // As the proxy holds it: a source picked from config, behind a box.
    let source: Box<dyn IdentitySource> =
        Box::new(FilesSource::new(config(dir.path())).expect("files source"));
    let identity = source.start(StartOptions::default()).await;
    let current = identity.credentials().current();
    assert_eq!(current.svid.leaf(), &svid.chain[0]);
    assert_eq!(
        current.svid.spiffe_id().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger"
    );
    assert!(current.bundles.get(ca.trust_domain()).is_some());
    let status = identity.status().borrow().clone();
    assert_eq!(status.state, IdentityState::Serving);
    assert_eq!(status.not_after, current.svid.not_after());
    assert_eq!(identity.expires_at(), current.svid.not_after());
    assert!(identity.is_serving());
}

#[tokio::test]
async fn a_rewritten_certificate_is_picked_up() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    write_svid(dir.path(), &ca.issue(WORKLOAD), &ca.bundle_pem());
    let identity = start(dir.path()).await;
    let mut rotations = identity.credentials().subscribe();
    rotations.borrow_and_update();

    let renewed = ca.issue(WORKLOAD);
    // Key first, then the certificate: between the two the pair does not match, which the source
    // must ride out (settle delay, or a logged refusal followed by success).
    replace(&dir.path().join("svid.key"), &renewed.key_pem);
    replace(&dir.path().join("svid.pem"), &renewed.chain_pem);

    let mut status = identity.status();
    let after = status_where(&mut status, |s| s.rotations >= 1).await;
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &renewed.chain[0]
    );
    assert_eq!(after.state, IdentityState::Serving);
    assert!(
        rotations.has_changed().unwrap(),
        "subscribers see the rotation"
    );
}

/// A broken rewrite: its name, the files written (in order), words the logged reason must contain.
type Case<'a> = (&'a str, Vec<(&'a Path, String)>, Vec<&'a str>);

#[tokio::test]
async fn broken_rewrites_keep_the_current_credentials_and_say_why() {
    let ca = TestCa::new("bank.example");
    let other_ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue(WORKLOAD);
    write_svid(dir.path(), &good, &ca.bundle_pem());
    let identity = start(dir.path()).await;
    let mut status = identity.status();
    let cert_path = dir.path().join("svid.pem");
    let key_path = dir.path().join("svid.key");
    let bundle_path = dir.path().join("bundle.pem");

    // Each case: what to write, and words the logged reason must contain.
    let unknown_issuer = ca.issue_bad(BadSvid::UnknownIssuer, WORKLOAD);
    let expired = ca.issue_bad(BadSvid::Expired, WORKLOAD);
    let ca_as_leaf = ca.issue_bad(BadSvid::CaAsLeaf, WORKLOAD);
    let stranger = ca.issue(WORKLOAD);
    let cases: Vec<Case<'_>> = vec![
        (
            "garbage certificate PEM",
            vec![(
                &cert_path,
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            )],
            vec!["svid.pem"],
        ),
        (
            "key of another certificate",
            vec![(&key_path, stranger.key_pem.clone())],
            vec!["svid.key", "does not match"],
        ),
        (
            "chain from a CA outside the bundle",
            vec![
                (&key_path, unknown_issuer.key_pem.clone()),
                (&cert_path, unknown_issuer.chain_pem.clone()),
            ],
            vec!["unknown CA"],
        ),
        (
            "expired certificate",
            vec![
                (&key_path, expired.key_pem.clone()),
                (&cert_path, expired.chain_pem.clone()),
            ],
            vec!["expired"],
        ),
        (
            "CA certificate as leaf",
            vec![
                (&key_path, ca_as_leaf.key_pem.clone()),
                (&cert_path, ca_as_leaf.chain_pem.clone()),
            ],
            vec!["CA certificate"],
        ),
        (
            "bundle of another CA",
            vec![
                (&key_path, good.key_pem.clone()),
                (&cert_path, good.chain_pem.clone()),
                (&bundle_path, other_ca.bundle_pem()),
            ],
            vec!["unknown CA"],
        ),
        (
            "empty bundle",
            vec![(&bundle_path, String::new())],
            vec!["bundle.pem", "no certificate"],
        ),
    ];

    for (what, writes, reasons) in cases {
        // Start each case from the good files, and wait until the source has seen them again.
        replace(&key_path, &good.key_pem);
        replace(&cert_path, &good.chain_pem);
        replace(&bundle_path, &ca.bundle_pem());
        status_where(&mut status, |s| s.last_error.is_none()).await;
        for (path, contents) in writes {
            replace(path, &contents);
        }
        let seen = status_where(&mut status, |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| reasons.iter().all(|r| e.contains(r)))
        })
        .await;
        let current = identity.credentials().current();
        assert_eq!(
            current.svid.leaf(),
            &good.chain[0],
            "{what}: the good SVID must keep serving"
        );
        assert_eq!(seen.rotations, 0, "{what}: nothing was rotated");
        assert_eq!(seen.state, IdentityState::Serving, "{what}");
    }

    // A good set of files afterwards is taken.
    let renewed = ca.issue(WORKLOAD);
    write_svid(dir.path(), &renewed, &ca.bundle_pem());
    let seen = status_where(&mut status, |s| s.rotations == 1).await;
    assert_eq!(seen.last_error, None);
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &renewed.chain[0]
    );
}

/// With watching off (as for NFS, which sends no notifications), the periodic re-check alone
/// notices a rewrite.
#[tokio::test]
async fn the_periodic_recheck_catches_changes_without_a_watcher() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    write_svid(dir.path(), &ca.issue(WORKLOAD), &ca.bundle_pem());
    let mut config = config(dir.path());
    config.watch = false;
    let identity = FilesSource::new(config)
        .unwrap()
        .start(StartOptions::default())
        .await;

    let renewed = ca.issue(WORKLOAD);
    write_svid(dir.path(), &renewed, &ca.bundle_pem());
    let mut status = identity.status();
    status_where(&mut status, |s| s.rotations == 1).await;
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &renewed.chain[0]
    );
}

#[tokio::test]
async fn federated_bundles_are_kept_under_their_own_trust_domain() {
    let ca = TestCa::new("bank.example");
    let partner = TestCa::new("partner.example");
    let dir = tempfile::tempdir().unwrap();
    write_svid(dir.path(), &ca.issue(WORKLOAD), &ca.bundle_pem());
    let partner_bundle = dir.path().join("partner.json");
    std::fs::write(&partner_bundle, partner.bundle().to_spiffe_json().unwrap()).unwrap();

    let config = config(dir.path()).with_federated(partner.trust_domain().clone(), &partner_bundle);
    let identity = FilesSource::new(config)
        .unwrap()
        .start(StartOptions::default())
        .await;
    let current = identity.credentials().current();
    assert_eq!(current.bundles.len(), 2);
    assert_eq!(current.bundles.get(ca.trust_domain()), Some(&ca.bundle()));
    assert_eq!(
        current
            .bundles
            .get(partner.trust_domain())
            .map(|b| b.roots().to_vec()),
        Some(vec![partner.root_der().clone()])
    );
}

#[tokio::test]
async fn missing_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = FilesSource::new(config(dir.path())).unwrap();
    let err = source.fetch().await.unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::File {
                role: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("svid.pem"), "{err}");

    let missing_dir = dir.path().join("nope");
    let err = FilesSource::new(FilesConfig::in_dir(&missing_dir)).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn start_waits_until_the_files_hold_a_valid_svid() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().expect("temp dir");
    write_svid(
        dir.path(),
        &ca.issue_bad(BadSvid::Expired, WORKLOAD),
        &ca.bundle_pem(),
    );
    let source = FilesSource::new(config(dir.path())).expect("files source");
    let starting = tokio::spawn(source.start(StartOptions::default()));
    // An expired certificate is not served: start has not returned. Whatever the source does
    // next, it must be because of the new files below.
    tokio::task::yield_now().await;
    assert!(!starting.is_finished());

    let good = ca.issue(WORKLOAD);
    write_svid(dir.path(), &good, &ca.bundle_pem());
    let identity = tokio::time::timeout(NOTICE, starting)
        .await
        .expect("start returns once the files are good")
        .expect("start does not panic");
    assert_eq!(identity.credentials().current().svid.leaf(), &good.chain[0]);
    assert!(identity.is_serving());
}
