//! `meshguard proxy` as a process: start from a config, serve, drain on SIGTERM and exit 0; and
//! transparent capture for real, in network namespaces this test creates (root only).
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should fail the test at once

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::TestCa;

mod support;

use support::netns::Netns;
use support::{Proc, wait_for_log_line, wait_sidecar_ready, write_identity};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const TD: &str = "bank.example";

/// Log lines may carry colour codes; the test reads the text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_proxy_serves_then_drains_on_sigterm_and_exits_zero() {
    let ca = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "default = \"allow-authenticated\"\n",
    )
    .unwrap();
    let config = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = \"access.log\"\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{}\"\npolicy = \"policy.toml\"\n\
         [timeouts]\ndrain_grace = \"2s\"\n",
        write_identity(&ca, dir.path(), "/ns/ledger/sa/ledger"),
        upstream.local_addr().unwrap()
    );
    let config_path = dir.path().join("sidecar.toml");
    std::fs::write(&config_path, config).unwrap();

    let check = Command::new(BIN)
        .args(["proxy", "--check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("\"upstream\""));

    let mut child = Proc(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .map(|l| strip_ansi(&l))
        .find(|l| l.contains("proxy ready"))
        .expect("the proxy reports ready");
    let admin: SocketAddr = ready
        .split("admin_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin_addr in {ready}"))
        .parse()
        .unwrap();
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    sigterm(&child.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| strip_ansi(l).contains("proxy stopped")),
        "{rest:?}"
    );
}

#[test]
fn a_broken_config_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        "[identity]\nworkload_api = \"unix:///x\"\n[admin]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:5:1:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("lisen"), "{stderr}");
}

#[test]
fn check_into_a_closed_pipe_ends_quietly_instead_of_panicking() {
    let ca = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), "default = \"deny\"\n").unwrap();
    let config = format!(
        "{}[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward_to = \"127.0.0.1:9\"\npolicy = \"policy.toml\"\n",
        write_identity(&ca, dir.path(), "/ns/ledger/sa/ledger"),
    );
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, config).unwrap();
    // `| head` that has already gone: the read end is closed before meshguard writes a byte,
    // so its write fails with EPIPE every time, not only when it loses a race.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(BIN)
        .args(["proxy", "--check", "--config"])
        .arg(&path)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{}: {stderr}", output.status);
}

// === transparent capture in network namespaces ===

fn apply_capture(ns: &Netns, config: &Path) {
    let config = meshguard_proxy::Config::load(config).unwrap();
    let spec = meshguard_proxy::iptables::CaptureSpec::from_config(&config, 0);
    for rule in spec.install_rules(meshguard_proxy::iptables::Family::V4) {
        let mut args = vec!["iptables", "-w"];
        args.extend(rule.iter().map(String::as_str));
        let status = ns.command(&args).output().unwrap();
        assert!(
            status.status.success(),
            "iptables {rule:?}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
}

#[test]
fn transparent_capture_carries_an_unchanged_dial_through_two_sidecars() {
    if !support::netns::require_or_skip(
        "transparent_capture_carries_an_unchanged_dial_through_two_sidecars",
        &["iptables", "curl"],
    ) {
        return;
    }
    let (client_ns, server_ns) = (Netns::new("mgc"), Netns::new("mgs"));
    client_ns.link(&["10.203.0.1/24"], &server_ns, &["10.203.0.2/24"]);
    // Declared after the namespaces, so dropped (killed) before they are deleted.
    let mut procs = Vec::new();

    let ca = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let (client_dir, server_dir) = (dir.path().join("client"), dir.path().join("server"));
    std::fs::create_dir_all(&client_dir).unwrap();
    std::fs::create_dir_all(&server_dir).unwrap();
    let server_id = format!("spiffe://{TD}/ns/ledger/sa/ledger");
    let client_id = format!("spiffe://{TD}/ns/payments/sa/payments");
    std::fs::write(
        server_dir.join("policy.toml"),
        format!("default = \"deny\"\n[[policy]]\nname = \"payments-in\"\naction = \"allow\"\nprincipals = [\"{client_id}\"]\n"),
    )
    .unwrap();
    let server_config = server_dir.join("sidecar.toml");
    std::fs::write(
        &server_config,
        format!(
            "{}[access_log]\npath = \"access.log\"\n[[inbound]]\nlisten = \"0.0.0.0:15006\"\n\
             forward_to = \"127.0.0.1:8080\"\npolicy = \"policy.toml\"\n",
            write_identity(&ca, &server_dir, "/ns/ledger/sa/ledger")
        ),
    )
    .unwrap();
    let client_config = client_dir.join("sidecar.toml");
    std::fs::write(
        &client_config,
        format!(
            "{}[access_log]\npath = \"access.log\"\n[transparent]\nlisten = \"127.0.0.1:15001\"\n\
             [[transparent.route]]\ndestination = \"10.203.0.0/24\"\ntarget_port = 15006\nexpect = [\"{server_id}\"]\n",
            write_identity(&ca, &client_dir, "/ns/payments/sa/payments")
        ),
    )
    .unwrap();

    // The app server: an echo on port 8080, listening on every address of its namespace.
    let echo = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                s.bind(('0.0.0.0',8080))\ns.listen()\nwhile True:\n c,_=s.accept()\n while True:\n  d=c.recv(65536)\n  \
                if not d: break\n  c.sendall(d)\n c.close()\n";
    procs.push(Proc(
        server_ns
            .command(&["/usr/bin/python3", "-c", echo])
            .spawn()
            .unwrap(),
    ));
    for (ns, config) in [(&server_ns, &server_config), (&client_ns, &client_config)] {
        let log = std::fs::File::create(config.with_extension("stderr")).unwrap();
        procs.push(Proc(
            ns.command(&[BIN, "proxy", "--config", config.to_str().unwrap()])
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        wait_sidecar_ready(ns);
        apply_capture(ns, config);
    }

    // The client app, as an unprivileged user, dials the server's own address and port.
    let mut client = client_ns
        .command(&[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "nc",
            "-N",
            "-w",
            "10",
            "10.203.0.2",
            "8080",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello across namespaces\n")
        .unwrap();
    let output = client.wait_with_output().unwrap();
    let stderr_of =
        |p: &PathBuf| std::fs::read_to_string(p.with_extension("stderr")).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello across namespaces\n",
        "nc: {}\nclient sidecar: {}\nserver sidecar: {}",
        String::from_utf8_lossy(&output.stderr),
        stderr_of(&client_config),
        stderr_of(&server_config)
    );

    // Proof it went through both sidecars: their access logs name each other.
    let log_line = |dir: &Path, pred: &dyn Fn(&serde_json::Value) -> bool| {
        wait_for_log_line(&dir.join("access.log"), pred)
    };
    let outbound = log_line(&client_dir, &|l| l["direction"] == "transparent");
    assert_eq!(outbound["original_dst"], "10.203.0.2:8080");
    assert_eq!(outbound["upstream"], "10.203.0.2:15006");
    assert_eq!(outbound["peer_id"], server_id.as_str());
    let inbound = log_line(&server_dir, &|l| l["direction"] == "inbound");
    assert_eq!(inbound["peer_id"], client_id.as_str());
    assert_eq!(inbound["decision"], "allow");
    assert_eq!(inbound["bytes_in"], 24);
}
