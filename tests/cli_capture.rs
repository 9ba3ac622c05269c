//! `meshguard iptables --apply` in a real "pod" network namespace, probed from a "neighbour"
//! namespace over IPv4 and IPv6: a plain connection to the app's port must land on the sidecar's
//! inbound mTLS listener (and be refused there), and the app's own plain dial out must land on the
//! transparent listener, over both families. Before ip6tables rules existed, IPv6 went straight
//! through (root only; see tests/support/netns.rs).
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should fail the test at once

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::{SvidSpec, TestCa};
use support::netns::{self, Netns};
use support::{Proc, wait_for_log_line, wait_sidecar_ready};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const TD: &str = "bank.example";
const POD_V4: &str = "198.18.0.2";
const POD_V6: &str = "fd00:6d67::2";
const NEIGHBOUR_V4: &str = "198.18.0.1";
const NEIGHBOUR_V6: &str = "fd00:6d67::1";
const APP_PORT: &str = "8080";
const NEIGHBOUR_PORT: &str = "9000";

/// An echo server on every IPv4 and IPv6 address of its namespace.
fn echo(ns: &Netns, port: &str) -> Proc {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\n\
         s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('::',{port}))\ns.listen()\nwhile True:\n c,_=s.accept()\n d=c.recv(65536)\n \
         c.sendall(b'APP:'+d)\n c.close()\n"
    );
    Proc(ns.command(&["python3", "-c", &script]).spawn().unwrap())
}

/// A plain TCP client in `ns` (as uid 65534, so outbound capture applies to it): what came back.
fn dial(ns: &Netns, host: &str, port: &str) -> String {
    let output = ns
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
            "5",
            host,
            port,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"hello\n")?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until the app at `host:port` answers a dial from `ns` (the echo servers start in the
/// background).
fn wait_reachable(ns: &Netns, host: &str, port: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dial(ns, host, port) != "APP:hello\n" {
        assert!(
            Instant::now() < deadline,
            "{host}:{port} never answered from {}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn capture_covers_ipv4_and_ipv6_inbound_and_outbound() {
    let test = "capture_covers_ipv4_and_ipv6_inbound_and_outbound";
    let tools = ["iptables", "ip6tables", "python3", "nc", "curl", "setpriv"];
    if !netns::require_or_skip(test, &tools) {
        return;
    }
    let pod = Netns::new("mgpod");
    let neighbour = Netns::new("mgnb");
    pod.link(
        &[&format!("{POD_V4}/24"), &format!("{POD_V6}/64")],
        &neighbour,
        &[&format!("{NEIGHBOUR_V4}/24"), &format!("{NEIGHBOUR_V6}/64")],
    );

    let ca = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let svid = ca.issue_with(&SvidSpec::new("/ns/ledger/sa/ledger"));
    let files = svid.write_to_dir(dir.path(), &ca.bundle_pem()).unwrap();
    std::fs::write(dir.path().join("policy.toml"), "default = \"deny\"\n").unwrap();
    let access_log = dir.path().join("access.log");
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n\
             [access_log]\npath = \"{}\"\n\
             [[inbound]]\nlisten = \"[::]:15006\"\nforward_to = \"127.0.0.1:{APP_PORT}\"\npolicy = \"policy.toml\"\n\
             [transparent]\nlisten = \"[::]:15001\"\n",
            files.cert.display(),
            files.key.display(),
            files.bundle.display(),
            access_log.display(),
        ),
    )
    .unwrap();

    let _app = echo(&pod, APP_PORT);
    let _neighbour_app = echo(&neighbour, NEIGHBOUR_PORT);
    let stderr = std::fs::File::create(dir.path().join("sidecar.stderr")).unwrap();
    let _sidecar = Proc(
        pod.command(&[BIN, "proxy", "--config", config.to_str().unwrap()])
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_sidecar_ready(&pod);
    // Before capture, each side reaches the other's app over both families: the setup works.
    for (from, to, port) in [
        (&neighbour, POD_V4, APP_PORT),
        (&neighbour, POD_V6, APP_PORT),
        (&pod, NEIGHBOUR_V4, NEIGHBOUR_PORT),
        (&pod, NEIGHBOUR_V6, NEIGHBOUR_PORT),
    ] {
        wait_reachable(from, to, port);
    }

    let applied = pod
        .command(&[
            BIN,
            "iptables",
            "--apply",
            "--config",
            config.to_str().unwrap(),
            "--proxy-uid",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "meshguard iptables --apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let sidecar_log = || std::fs::read_to_string(dir.path().join("sidecar.stderr")).unwrap();
    for (pod_addr, neighbour_addr) in [(POD_V6, NEIGHBOUR_V6), (POD_V4, NEIGHBOUR_V4)] {
        // Inbound: the plain dial to the app's port meets the mTLS listener, not the app.
        let reply = dial(&neighbour, pod_addr, APP_PORT);
        assert!(
            !reply.contains("APP:"),
            "a plain connection from the neighbour to {pod_addr} reached the app: {reply:?}\n{}",
            sidecar_log()
        );
        let line = wait_for_log_line(&access_log, &|l| {
            l["direction"] == "inbound"
                && l["source_addr"]
                    .as_str()
                    .is_some_and(|a| a.contains(neighbour_addr))
        });
        assert_eq!(line["error_class"], "downstream", "{line}");
        assert!(line["decision"].is_null(), "{line}");

        // Outbound: the app's plain dial to the neighbour meets the transparent listener, which
        // has no route for it and refuses (default deny).
        let reply = dial(&pod, neighbour_addr, NEIGHBOUR_PORT);
        assert!(
            !reply.contains("APP:"),
            "the app's plain dial to {neighbour_addr} left the pod uncaptured: {reply:?}\n{}",
            sidecar_log()
        );
        let line = wait_for_log_line(&access_log, &|l| {
            l["direction"] == "transparent"
                && l["original_dst"]
                    .as_str()
                    .is_some_and(|a| a.contains(neighbour_addr))
        });
        assert_eq!(line["decision"], "deny", "{line}");
        assert_eq!(line["error_class"], "policy", "{line}");
    }

    // --remove takes both families' rules out: the app is reachable again over both.
    let removed = pod
        .command(&[BIN, "iptables", "--remove"])
        .output()
        .unwrap();
    assert!(removed.status.success());
    assert_eq!(dial(&neighbour, POD_V4, APP_PORT), "APP:hello\n");
    assert_eq!(dial(&neighbour, POD_V6, APP_PORT), "APP:hello\n");
    for program in ["iptables-save", "ip6tables-save"] {
        let saved = pod.run(&[program, "-t", "nat"]);
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert!(
            !saved.contains("MESHGUARD"),
            "{program} still shows:\n{saved}"
        );
    }
}
