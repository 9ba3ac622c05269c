//! Interop with TLS clients nobody here wrote: `openssl s_client` and `curl` complete mTLS against
//! a meshguard TLS server with their client certificates, and are refused without one.
//!
//! Both tools are required (the CI installs them); a missing tool fails the test loudly.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Reply, TestServer, tls_error};
use meshguard_identity::TlsProfile;
use meshguard_identity::test_ca::{SvidFiles, SvidSpec, TestCa};

const SERVER: &str = "/ns/ledger/sa/ledger";
const CLIENT: &str = "/ns/payments/sa/payments";

struct Setup {
    _dir: tempfile::TempDir,
    files: SvidFiles,
    server: TestServer,
}

/// A meshguard server whose SVID also names `localhost` (curl checks host names; SPIFFE peers do
/// not), and a client SVID written to files for the external tool.
async fn setup() -> Setup {
    let ca = TestCa::new("bank.example");
    let server_svid = ca
        .issue_with(&SvidSpec::new(SERVER).dns("localhost"))
        .to_svid()
        .unwrap();
    let creds = meshguard_identity::RotatingCredentials::new(meshguard_identity::Credentials::new(
        server_svid,
        ca.bundle_set(),
    ))
    .unwrap();
    let config = TlsProfile::new(creds)
        .with_alpn(["http/1.1"])
        .server_config()
        .unwrap();
    let server = TestServer::start(config, Reply::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let files = ca
        .issue(CLIENT)
        .write_to_dir(dir.path(), &ca.bundle_pem())
        .unwrap();
    Setup {
        _dir: dir,
        files,
        server,
    }
}

async fn run(mut cmd: Command, stdin: &'static str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn s_client(port: u16, client: Option<&SvidFiles>, bundle: &Path) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-tls1_3",
    ])
    .args(["-verify_return_error", "-ign_eof", "-CAfile"])
    .arg(bundle);
    if let Some(files) = client {
        cmd.arg("-cert")
            .arg(&files.cert)
            .arg("-key")
            .arg(&files.key);
    }
    cmd
}

fn curl(port: u16, client: Option<&SvidFiles>, bundle: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--fail",
        "--tlsv1.3",
        "--max-time",
        "20",
    ])
    .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
    .arg("--cacert")
    .arg(bundle)
    .arg(format!("https://localhost:{port}/"));
    if let Some(files) = client {
        cmd.arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key);
    }
    cmd
}

#[tokio::test]
async fn openssl_s_client_completes_mtls() {
    let mut s = setup().await;
    let port = s.server.addr.port();
    let out = run(
        s_client(port, Some(&s.files), &s.files.bundle),
        "GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("hello spiffe://bank.example/ns/payments/sa/payments"),
        "{stdout}"
    );
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    let accepted = s.server.next_handshake().await.unwrap();
    assert_eq!(accepted.info.version.as_deref(), Some("TLSv1_3"));
}

#[tokio::test]
async fn openssl_s_client_without_certificate_is_refused() {
    let mut s = setup().await;
    let port = s.server.addr.port();
    let out = run(
        s_client(port, None, &s.files.bundle),
        "GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("hello spiffe://"), "{stdout}");
    let err = s
        .server
        .next_handshake()
        .await
        .expect_err("anonymous openssl accepted");
    assert!(
        matches!(
            tls_error(&err),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn curl_completes_mtls() {
    let mut s = setup().await;
    let port = s.server.addr.port();
    let out = run(curl(port, Some(&s.files), &s.files.bundle), "").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "hello spiffe://bank.example/ns/payments/sa/payments\n"
    );
    let accepted = s.server.next_handshake().await.unwrap();
    assert_eq!(
        accepted.peer.unwrap().as_str(),
        "spiffe://bank.example/ns/payments/sa/payments"
    );
    assert_eq!(accepted.info.alpn.as_deref(), Some("http/1.1"));
}

#[tokio::test]
async fn curl_without_certificate_is_refused() {
    let mut s = setup().await;
    let port = s.server.addr.port();
    let out = run(curl(port, None, &s.files.bundle), "").await;
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello"));
    let err = s
        .server
        .next_handshake()
        .await
        .expect_err("anonymous curl accepted");
    assert!(
        matches!(
            tls_error(&err),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{err:?}"
    );
}
