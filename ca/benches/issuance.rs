//! Issuance speed through the API with the root key in SoftHSM2: SVIDs per second for renewals
//! over mTLS (HTTP/2, many requests in flight), each one a CSR verified, a certificate signed in
//! the HSM and an audit line written. The client runs in the same process and shares the CPUs.
//!
//! `cargo bench -p meshguard-ca --bench issuance` (set `MESHGUARD_BENCH_SECS`, default 5).
//! SoftHSM reads `SOFTHSM2_CONF` at start, so the bench re-runs itself with a fresh token dir.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_ca::issue::TtlPolicy;
use meshguard_ca::key::KeyAlgorithm;
use meshguard_ca::serve::Server;
use meshguard_ca::{Authority, InitOptions};
use meshguard_identity::{
    BundleSet, Credentials, RotatingCredentials, SpiffeId, TlsProfile, TrustDomain, X509Svid,
};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 64;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    match std::env::var("MESHGUARD_BENCH_URI") {
        Ok(uri) => child(&uri),
        Err(_) => parent(),
    }
}

fn parent() -> ExitCode {
    if !std::path::Path::new(MODULE).exists() {
        eprintln!("!!!!! SKIPPED: {MODULE} is missing; install softhsm2 !!!!!");
        return ExitCode::SUCCESS;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success());
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234").expect("pin");
    let uri = format!(
        "pkcs11:token=bench;object=root?module-path={MODULE}&pin-source=file:{}",
        pin.display()
    );
    let status = Command::new(std::env::current_exe().expect("exe"))
        .env("SOFTHSM2_CONF", &conf)
        .env("MESHGUARD_BENCH_URI", uri)
        .env("MESHGUARD_BENCH_STATE", dir.path().join("state"))
        .status()
        .expect("child");
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn child(uri: &str) -> ExitCode {
    let secs: u64 = std::env::var("MESHGUARD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let state = std::path::PathBuf::from(std::env::var("MESHGUARD_BENCH_STATE").expect("state"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let ca = Authority::init(
            &state,
            InitOptions {
                trust_domain: TrustDomain::parse("bench.example").expect("td"),
                key: uri.parse().expect("uri"),
                algorithm: KeyAlgorithm::EcdsaP256,
                use_existing_key: false,
                root_ttl: Duration::from_secs(86400),
                root_spiffe_id: None,
                ttl: TtlPolicy::default(),
                pin_from_env: None,
            },
            SystemTime::now(),
        )
        .expect("init");
        let id = SpiffeId::parse("spiffe://bench.example/ns/load/sa/load").expect("id");
        let (issued, key) = ca.issue_local(&id, &[], None, "bench", SystemTime::now()).expect("client svid");
        let svid = X509Svid::from_pem(issued.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("svid");
        let creds = Credentials::new(svid, BundleSet::single(ca.bundle().clone()));
        // The signing rate limit is lifted: this measures what the CA can sign, not the limit.
        let unlimited = meshguard_ca::serve::Limits {
            signing_rate: std::num::NonZeroU32::MAX,
            signing_burst: std::num::NonZeroU32::MAX,
            ..meshguard_ca::serve::Limits::default()
        };
        let server = Server::bind(ca, "127.0.0.1:0", &[])
            .await
            .expect("bind")
            .with_limits(unlimited)
            .expect("limits");
        let addr = server.local_addr();
        tokio::spawn(server.run(std::future::pending()));

        // Distinct CSRs made up front, so the figure is the CA's work, not the client's keygen.
        let bodies: Arc<Vec<Bytes>> = Arc::new(
            (0..256)
                .map(|_| {
                    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
                    let mut params = rcgen::CertificateParams::default();
                    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().expect("uri"))];
                    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
                    Bytes::from(serde_json::json!({ "csr": csr }).to_string())
                })
                .collect(),
        );
        let config = TlsProfile::new(RotatingCredentials::new(creds).expect("creds"))
            .with_alpn(["h2"])
            .client_config()
            .expect("client config");
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut senders = Vec::new();
        for _ in 0..CONNECTIONS {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let tls = connector.connect("localhost".try_into().expect("name"), tcp).await.expect("tls");
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
            tokio::spawn(conn);
            senders.push(sender);
        }

        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..IN_FLIGHT {
            let mut sender = senders[w % CONNECTIONS].clone();
            let (bodies, done, failed, stop) = (bodies.clone(), done.clone(), failed.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + IN_FLIGHT) % bodies.len();
                    let req = http::Request::post(format!("https://{addr}/v1/renew"))
                        .header("content-type", "application/json")
                        .body(Full::new(bodies[i].clone()))
                        .expect("request");
                    if sender.ready().await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    match sender.send_request(req).await {
                        Ok(resp) if resp.status() == 200 => {
                            let _ = resp.into_body().collect().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
        let (start_done, start_cpu, start) = (done.load(Ordering::Relaxed), cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (end_done, end_cpu, elapsed) = (done.load(Ordering::Relaxed), cpu_seconds(), start.elapsed());
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }
        let n = end_done - start_done;
        let rate = n as f64 / elapsed.as_secs_f64();
        let cpu = end_cpu - start_cpu;
        println!("issuance through the API, root key in SoftHSM2 (ECDSA P-256), {CONNECTIONS} h2 mTLS connections, {IN_FLIGHT} in flight:");
        println!("  {n} SVIDs in {:.2} s = {rate:.0} SVIDs/s (client in the same process)", elapsed.as_secs_f64());
        println!("  process CPU {cpu:.2} s = {:.0} SVIDs per CPU-second; failures {}", n as f64 / cpu.max(1e-9), failed.load(Ordering::Relaxed));
    });
    ExitCode::SUCCESS
}

/// User + system CPU time of this process, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
