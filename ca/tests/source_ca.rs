//! identity's CA source against a real `meshguard ca serve` API in process (software key: the HSM
//! path of the API is covered by the CLI tests): bootstrap with a token, renew over mTLS with a new
//! key, keep the current SVID while the CA is down, recover when it returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use meshguard_ca::Authority;
use meshguard_ca::serve::Server;
use meshguard_identity::SpiffeId;
use meshguard_identity::source::ca::{CaSource, CaSourceConfig};
use meshguard_identity::source::{IdentitySource, StartOptions};
use rustls_pki_types::pem::PemObject;
use tokio::sync::oneshot;

fn init(dir: &Path) {
    Authority::init(
        &dir.join("state"),
        support::software_ca_options(dir),
        SystemTime::now(),
    )
    .unwrap();
}

async fn start_ca(
    dir: &Path,
    listen: &str,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let ca = Authority::open(&dir.join("state"), None).unwrap();
    let server = Server::bind(ca, listen, &[]).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

fn source(dir: &Path, addr: SocketAddr, id: &SpiffeId, token_name: &str) -> CaSource {
    let ca = Authority::open(&dir.join("state"), None).unwrap();
    let token = ca
        .tokens()
        .create(id, Duration::from_secs(600), SystemTime::now())
        .unwrap();
    let token_file = dir.join(token_name);
    std::fs::write(&token_file, token.expose()).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, ca.bundle_pem()).unwrap();
    CaSource::new(CaSourceConfig::new(
        format!("https://{addr}"),
        id.clone(),
        token_file,
        bundle,
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_renew_outage_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let (addr, stop, task) = start_ca(dir.path(), "127.0.0.1:0").await;
    let id = SpiffeId::parse("spiffe://bank.example/ns/payments/sa/payments").unwrap();
    let mut source = source(dir.path(), addr, &id, "token");

    let first = source.fetch().await.unwrap();
    assert_eq!(first.svid.spiffe_id(), &id);
    // Renewal: a new key and a new certificate for the same ID, over mTLS.
    let second = source.fetch().await.unwrap();
    assert_eq!(second.svid.spiffe_id(), &id);
    assert_ne!(second.svid.leaf(), first.svid.leaf());
    assert_ne!(
        second.svid.private_key().secret_der(),
        first.svid.private_key().secret_der()
    );

    // The CA goes down: fetch fails, the current SVID stays.
    stop.send(()).unwrap();
    task.await.unwrap();
    let err = source.fetch().await.unwrap_err();
    assert!(err.to_string().contains("cannot reach the CA"), "{err}");
    assert_eq!(source.current().unwrap().svid.leaf(), second.svid.leaf());

    // It comes back on the same address: renewal works again.
    let (_addr, stop, task) = start_ca(dir.path(), &addr.to_string()).await;
    let third = source.fetch().await.unwrap();
    assert_ne!(third.svid.leaf(), second.svid.leaf());

    // The trail holds both bootstrap and renewals.
    let ca = Authority::open(&dir.path().join("state"), None).unwrap();
    let events: Vec<_> = ca
        .audit()
        .records()
        .unwrap()
        .into_iter()
        .map(|r| format!("{:?}", r.entry.event))
        .collect();
    assert!(
        events.iter().filter(|e| *e == "Renew").count() >= 2,
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "Bootstrap"));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_starts_from_the_ca_and_a_used_token_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let (addr, stop, task) = start_ca(dir.path(), "127.0.0.1:0").await;
    let id = SpiffeId::parse("spiffe://bank.example/ns/ledger/sa/ledger").unwrap();
    let source_a = source(dir.path(), addr, &id, "token-a");
    let running = tokio::time::timeout(
        Duration::from_secs(20),
        source_a.start(StartOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(running.credentials().current().svid.spiffe_id(), &id);
    assert!(running.is_serving());

    // A second source with the same (now used) token file cannot bootstrap, and says why.
    let bundle = dir.path().join("bundle.pem");
    let mut replay = CaSource::new(CaSourceConfig::new(
        format!("https://{addr}"),
        id.clone(),
        dir.path().join("token-a"),
        bundle,
    ))
    .unwrap();
    let err = replay.fetch().await.unwrap_err().to_string();
    assert!(err.contains("token_used"), "{err}");
    drop(running);
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// `ca revoke` reaches sidecars with their next renewal: the CA source fetches `/v1/revoked`
/// with each SVID, and the credentials' bundle then refuses the revoked peer at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_is_refused_by_sidecars_after_their_next_renewal() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let (addr, stop, task) = start_ca(dir.path(), "127.0.0.1:0").await;
    let id = SpiffeId::parse("spiffe://bank.example/ns/ledger/sa/ledger").unwrap();
    let mut source = source(dir.path(), addr, &id, "token");
    let thief = SpiffeId::parse("spiffe://bank.example/ns/web/sa/frontend").unwrap();
    let ca = Authority::open(&dir.path().join("state"), None).unwrap();
    let (stolen, _key) = ca
        .issue_local(&thief, &[], None, "test", SystemTime::now())
        .unwrap();
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(stolen.pem().as_bytes())
        .map(Result::unwrap)
        .collect();
    let now = meshguard_identity::unix_time(SystemTime::now());

    let before = source.fetch().await.unwrap();
    assert!(meshguard_identity::validate_svid(&chain, &before.bundles, now).is_ok());

    meshguard_ca::revocation::revoke(
        ca.state(),
        ca.audit(),
        &meshguard_ca::revocation::Target::Serial(stolen.serial.clone()),
        "INC-9",
        SystemTime::now(),
    )
    .unwrap();
    let after = source.fetch().await.unwrap();
    let refused = meshguard_identity::validate_svid(&chain, &after.bundles, now).unwrap_err();
    assert_eq!(refused.label(), "revoked", "{refused}");
    assert!(refused.to_string().contains(&stolen.serial), "{refused}");
    // The sidecar's own renewed SVID is unaffected.
    assert!(after.check(now).is_ok());
    stop.send(()).unwrap();
    task.await.unwrap();
}
