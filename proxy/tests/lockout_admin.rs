//! Lockout and break-glass through a running proxy: real sockets, real mTLS, the real admin API.
//! Repeated failed handshakes block the source address, a blocked caller is refused and logged
//! with "locked out until ...", the operator lists and clears blocks; a break-glass grant posted to
//! the admin API lets a denied principal through at once and marks each decision it grants.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test at once

mod support;
mod tools;

use std::net::SocketAddr;

use meshguard_identity::test_ca::TestCa;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The control surface, on a socket in the workload's directory.
const CONTROL: &str = "[admin.control]\nsocket = \"admin.sock\"\naudit_log = \"admin-audit.log\"\n";

/// One control call over the workload's admin socket; returns the status and body.
async fn admin(server: &Workload, method: &str, path: &str, body: &str) -> (u16, String) {
    let body = (!body.is_empty()).then(|| body.to_owned());
    let answer = meshguard_proxy::admin::client::call(
        &server.path("admin.sock"),
        method.parse().unwrap(),
        path,
        body,
    )
    .await
    .unwrap();
    (answer.status.as_u16(), answer.body)
}

/// One request to the TCP probe listener; returns the status and body.
async fn probe(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_handshakes_lock_the_source_out_until_the_operator_clears_it() {
    let ca = TestCa::new(TD);
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let proxy = server
        .start(&format!(
            "{}[lockout]\nthreshold = 3\nwindow = \"1m\"\nblock = \"5m\"\n\
             [lockout.unauthenticated]\nthreshold = 3\nblock = \"5m\"\n{CONTROL}",
            inbound(echo, &policy)
        ))
        .await;
    let addr = proxy.inbound_addrs[0];
    let payments = ca.issue(PAYMENTS);

    assert_eq!(
        tls_client_round_trip(addr, &ca, Some(&payments), b"before")
            .await
            .unwrap(),
        b"before"
    );
    // Three clients without a certificate from 127.0.0.1 trip the threshold.
    for _ in 0..3 {
        assert!(tls_client_round_trip(addr, &ca, None, b"x").await.is_err());
    }
    // Now even a good certificate from that address is refused, before any handshake.
    let refused = tls_client_round_trip(addr, &ca, Some(&payments), b"after").await;
    assert!(
        refused.is_err(),
        "a blocked address is refused: {refused:?}"
    );
    let line = server.wait_for_log(|l| l["rule"] == "lockout").await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["error_class"], "policy");
    let reason = line["reason"].as_str().unwrap();
    assert!(reason.starts_with("locked out until "), "{reason}");
    assert!(reason.contains("127.0.0.1"), "{reason}");

    let metrics = proxy.metrics.encode();
    assert!(
        metrics.contains("meshguard_lockout_blocks_active 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshguard_lockout_blocks_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshguard_lockout_refused_total 1"),
        "{metrics}"
    );

    let (status, body) = admin(&server, "GET", "/lockout", "").await;
    assert_eq!(status, 200, "{body}");
    let blocks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(blocks[0]["source_ip"], "127.0.0.1", "{blocks}");
    assert_eq!(blocks[0]["strikes"], 1);

    // Bad requests say what to send.
    assert_eq!(
        admin(&server, "DELETE", "/lockout?reason=x", "").await.0,
        400
    );
    assert_eq!(
        admin(&server, "DELETE", "/lockout?source_ip=nope&reason=x", "")
            .await
            .0,
        400
    );
    // The probe listener changes nothing: a neighbour reaching it cannot lift a block.
    for (method, path) in [
        ("DELETE", "/lockout?source_ip=127.0.0.1&reason=x"),
        ("POST", "/lockout/clear?source_ip=127.0.0.1&reason=x"),
        ("GET", "/lockout"),
    ] {
        let (status, body) = probe(proxy.admin_addr, method, path).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // A clear must say why.
    let (status, body) = admin(&server, "DELETE", "/lockout?source_ip=127.0.0.1", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reason"), "{body}");
    let (status, body) = admin(
        &server,
        "DELETE",
        "/lockout?source_ip=127.0.0.1&reason=INC-9%20false%20positive",
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "cleared 127.0.0.1\n"));
    assert_eq!(admin(&server, "GET", "/lockout", "").await.1.trim(), "[]");
    assert!(
        proxy
            .metrics
            .encode()
            .contains("meshguard_lockout_blocks_active 0")
    );

    assert_eq!(
        tls_client_round_trip(addr, &ca, Some(&payments), b"again")
            .await
            .unwrap(),
        b"again",
        "cleared: the caller gets through"
    );
    // Who cleared it, and why, is on record.
    let audit = std::fs::read_to_string(server.path("admin-audit.log")).unwrap();
    let cleared: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| {
            l["method"] == "DELETE" && l["outcome"] == "answered" && l["status"] == 200
        })
        .collect();
    assert_eq!(cleared.len(), 1, "{audit}");
    assert_eq!(cleared[0]["reason"], "INC-9 false positive");
    assert!(cleared[0]["operator"]["uid"].is_u64(), "{audit}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_denials_block_the_principal_not_its_address_and_post_clear_lifts_it() {
    let ca = TestCa::new(TD);
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write(
        "policy/policy.toml",
        &allow_only(&id("/ns/reporting/sa/reporting")),
    );
    let proxy = server
        .start(&format!(
            "{}[lockout]\nthreshold = 2\n{CONTROL}",
            inbound(echo, &policy)
        ))
        .await;
    let addr = proxy.inbound_addrs[0];
    let payments = ca.issue(PAYMENTS);
    for _ in 0..2 {
        let back = tls_client_round_trip(addr, &ca, Some(&payments), b"x")
            .await
            .unwrap_or_default();
        assert!(back.is_empty());
    }
    let (_, body) = admin(&server, "GET", "/lockout", "").await;
    let blocks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let principals: Vec<_> = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["principal"].as_str())
        .collect();
    assert_eq!(principals, [id(PAYMENTS).as_str()], "{blocks}");
    assert_eq!(
        blocks.as_array().unwrap().len(),
        1,
        "no address block: {blocks}"
    );
    // Another workload behind the same address (127.0.0.1, as behind a NAT) is not punished.
    let reporting = ca.issue("/ns/reporting/sa/reporting");
    assert_eq!(
        tls_client_round_trip(addr, &ca, Some(&reporting), b"innocent")
            .await
            .unwrap(),
        b"innocent"
    );
    let clear = format!(
        "/lockout/clear?principal={}&reason=INC-10",
        id(PAYMENTS).replace(':', "%3A")
    );
    assert_eq!(admin(&server, "POST", &clear, "").await.0, 200);
    let (_, body) = admin(&server, "GET", "/lockout", "").await;
    assert!(!body.contains("spiffe://"), "{body}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_http_requests_block_the_principal_on_its_open_connection_and_new_ones() {
    if !tools::require("denied_http_requests_block_the_principal...", &["curl"]) {
        return;
    }
    let ca = TestCa::new(TD);
    let app = http_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write(
        "policy/policy.toml",
        &format!(
            "default = \"deny\"\n[[policy]]\nname = \"payments-ok\"\naction = \"allow\"\n\
             principals = [\"{}\"]\npaths = [\"/ok\"]\n",
            id(PAYMENTS)
        ),
    );
    let proxy = server
        .start(&format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\nforward_to = \"{app}\"\n\
             policy = \"{}\"\n[lockout]\nthreshold = 2\n{CONTROL}",
            policy.display()
        ))
        .await;
    let port = proxy.inbound_addrs[0].port();
    let client = Workload::new(&ca, PAYMENTS);
    // One curl, one kept-alive connection: allowed, denied twice (the threshold), then a request
    // the policy allows, which the block now refuses on the same connection.
    let curl = |paths: &[&str]| {
        let mut command = tokio::process::Command::new("curl");
        command
            .args(["-sS", "--max-time", "20", "--http1.1", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cert")
            .arg(&client.files.cert)
            .arg("--key")
            .arg(&client.files.key)
            .arg("--cacert")
            .arg(&client.files.bundle)
            .args(["-w", "%{http_code} %{num_connects}\\n"]);
        for path in paths {
            command.args(["-o", "/dev/null"]);
            command.arg(format!("https://localhost:{port}{path}"));
        }
        command.output()
    };
    let output = curl(&["/ok", "/secret", "/secret", "/ok"]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200 1\n403 0\n403 0\n403 0\n",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = server
        .wait_for_log(|l| l["rule"] == "lockout" && l["http"]["path"] == "/ok")
        .await;
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("locked out until"),
        "{line}"
    );
    // A new connection is refused right after the handshake.
    let output = curl(&["/ok"]).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stdout).starts_with("200"),
        "a blocked principal got through on a new connection: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let (_, body) = admin(&server, "GET", "/lockout", "").await;
    assert!(body.contains(&id(PAYMENTS)), "{body}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_and_break_glass_are_off_unless_configured() {
    let ca = TestCa::new(TD);
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let proxy = server
        .start(&format!("{}{CONTROL}", inbound(echo, &policy)))
        .await;
    for _ in 0..12 {
        let _ = tls_client_round_trip(proxy.inbound_addrs[0], &ca, None, b"x").await;
    }
    let payments = ca.issue(PAYMENTS);
    assert!(
        tls_client_round_trip(proxy.inbound_addrs[0], &ca, Some(&payments), b"ok")
            .await
            .is_ok()
    );
    let (status, body) = admin(&server, "GET", "/lockout", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("[lockout]"), "{body}");
    assert_eq!(admin(&server, "GET", "/break-glass", "").await.0, 404);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_grant_posted_to_the_admin_api_applies_at_once_and_is_marked() {
    let ca = TestCa::new(TD);
    let echo = echo_server().await;
    let server = Workload::new(&ca, LEDGER);
    let policy = server.write(
        "policy/policy.toml",
        &allow_only(&id("/ns/reporting/sa/reporting")),
    );
    let proxy = server
        .start(&format!(
            "{}[break_glass]\nfile = \"policy/break-glass.toml\"\n{CONTROL}",
            inbound(echo, &policy)
        ))
        .await;
    let addr = proxy.inbound_addrs[0];
    let payments = ca.issue(PAYMENTS);
    let denied = tls_client_round_trip(addr, &ca, Some(&payments), b"x")
        .await
        .unwrap_or_default();
    assert!(denied.is_empty(), "denied before the grant");

    // A grant without a reason, for a pattern, or too long is refused with a sentence.
    for bad in [
        format!(
            r#"{{"principal": "{}", "for": "15m", "reason": " "}}"#,
            id(PAYMENTS)
        ),
        r#"{"principal": "spiffe://bank.example/*", "for": "15m", "reason": "x"}"#.to_owned(),
        format!(
            r#"{{"principal": "{}", "for": "48h", "reason": "x"}}"#,
            id(PAYMENTS)
        ),
        format!(
            r#"{{"principal": "{}", "for": "soon", "reason": "x"}}"#,
            id(PAYMENTS)
        ),
        r#"{"principal": "x"}"#.to_owned(),
    ] {
        let (status, body) = admin(&server, "POST", "/break-glass", &bad).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
    let grant = format!(
        r#"{{"principal": "{}", "for": "15m", "reason": "INC-4711 ledger migration", "issued_by": "on-call"}}"#,
        id(PAYMENTS)
    );
    let (status, body) = admin(&server, "POST", "/break-glass", &grant).await;
    assert_eq!(status, 201, "{body}");
    let granted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(granted["active"], true);

    // Applies to the next connection, without waiting for the file watcher.
    assert_eq!(
        tls_client_round_trip(addr, &ca, Some(&payments), b"emergency")
            .await
            .unwrap(),
        b"emergency"
    );
    let line = server
        .wait_for_log(|l| l["decision"] == "allow" && l["rule"] == "break-glass")
        .await;
    assert_eq!(line["peer_id"], id(PAYMENTS));
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("break-glass: INC-4711 ledger migration"),
        "{line}"
    );

    // The client `meshguard policy break-glass --admin-socket PATH` uses.
    let admin_url = server.path("admin.sock");
    let reporting = id("/ns/reporting/sa/reporting");
    let posted =
        meshguard_proxy::break_glass::post_grant(&admin_url, &reporting, "1h", "INC-4712", None)
            .await
            .unwrap();
    assert_eq!(posted["principal"], reporting.as_str());
    let refused =
        meshguard_proxy::break_glass::post_grant(&admin_url, &reporting, "1h", "", None).await;
    let refused = refused.unwrap_err();
    assert!(refused.contains("needs a reason"), "{refused}");

    let (status, body) = admin(&server, "GET", "/break-glass", "").await;
    assert_eq!(status, 200);
    let grants: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(grants[0]["principal"], id(PAYMENTS));
    assert!(
        grants[0]["issued_by"]
            .as_str()
            .unwrap()
            .starts_with("on-call via uid "),
        "{grants}"
    );
    assert_eq!(grants[1]["principal"], reporting.as_str());
    assert!(
        std::fs::read_to_string(server.path("policy/break-glass.toml"))
            .unwrap()
            .contains("INC-4711"),
        "the grant is persisted in the file the policy reads"
    );
    proxy.shutdown().await;
}
