//! Clients nobody here wrote: `openssl s_client` and `curl` with client certificates through the
//! inbound listener, `curl` and `nc` in plaintext through the outbound listener.

mod support;
mod tools;

use std::process::Output;

use meshguard_identity::test_ca::TestCa;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn run_with_stdin(command: &mut Command, stdin: &[u8]) -> Output {
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("the client program starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin)
        .await
        .expect("the client reads its stdin");
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client finishes within 30 s")
        .expect("the client's output is collected")
}

/// An inbound sidecar in front of the HTTP server, allowing payments; and the payments files.
async fn inbound_setup(ca: &TestCa) -> (Workload, Workload, meshguard_proxy::RunningProxy) {
    let http = http_server().await;
    let server = Workload::new(ca, LEDGER);
    let policy = server.write("policy.toml", &allow_only(&id(PAYMENTS)));
    let proxy = server.start(&inbound(http, &policy)).await;
    let client = Workload::new(ca, PAYMENTS);
    (server, client, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_a_client_certificate_gets_through_and_without_one_is_refused() {
    if !tools::require(
        "openssl_s_client_with_a_client_certificate...",
        &["openssl"],
    ) {
        return;
    }
    let ca = TestCa::new(TD);
    let (server, client, proxy) = inbound_setup(&ca).await;
    let addr = proxy.inbound_addrs[0].to_string();
    let files = &client.files;
    let output = run_with_stdin(
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-tls1_3",
                "-quiet",
                "-ign_eof",
                "-verify_return_error",
            ])
            .arg("-cert")
            .arg(&files.cert)
            .arg("-key")
            .arg(&files.key)
            .arg("-CAfile")
            .arg(&files.bundle),
        b"GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("200 OK"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = server.wait_for_log(|l| l["decision"] == "allow").await;
    assert_eq!(line["peer_id"], id(PAYMENTS));

    let output = run_with_stdin(
        Command::new("openssl")
            .args([
                "s_client", "-connect", &addr, "-tls1_3", "-quiet", "-ign_eof",
            ])
            .arg("-CAfile")
            .arg(&files.bundle),
        b"GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(!String::from_utf8_lossy(&output.stdout).contains("200 OK"));
    server
        .wait_for_log(|l| {
            l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("presented no certificate"))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_gets_through_the_inbound_listener() {
    if !tools::require("curl_with_a_client_certificate_gets_through...", &["curl"]) {
        return;
    }
    let ca = TestCa::new(TD);
    let (server, client, proxy) = inbound_setup(&ca).await;
    let port = proxy.inbound_addrs[0].port();
    let files = &client.files;
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--tlsv1.3",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--cacert")
        .arg(&files.bundle)
        .arg(format!("https://localhost:{port}/ledger/balances"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = server.wait_for_log(|l| l["decision"] == "allow").await;
    assert_eq!(line["sni"], "localhost");

    // Without a client certificate curl is refused.
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(&files.bundle)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert_ne!(String::from_utf8_lossy(&output.stdout), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_nc_in_plaintext_through_the_outbound_listener() {
    if !tools::require("curl_and_nc_in_plaintext_through...", &["curl", "nc"]) {
        return;
    }
    let http = http_server().await;
    let pair = Pair::start(http, &id(PAYMENTS), &id(LEDGER)).await;
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("http://{}/ledger/balances", pair.outbound_addr()))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let echo = echo_server().await;
    let pair = Pair::start(echo, &id(PAYMENTS), &id(LEDGER)).await;
    let addr = pair.outbound_addr();
    let output = run_with_stdin(
        Command::new("nc").args([
            "-N",
            "-w",
            "20",
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]),
        b"hello through two sidecars\n",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello through two sidecars\n"
    );
}

#[test]
#[should_panic(expected = "MESHGUARD_REQUIRE_TOOLS=1 but")]
fn a_missing_client_fails_the_run_when_tools_are_required() {
    tools::require_with("this test", &["curl", "meshguard-no-such-client"], true);
}

#[test]
fn a_missing_client_is_a_loud_skip_otherwise() {
    assert!(!tools::require_with(
        "this test",
        &["meshguard-no-such-client"],
        false
    ));
    assert!(tools::require_with("this test", &["sh"], true));
}
