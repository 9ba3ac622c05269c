//! The admin split, from where an attacker stands: a proxy in a "pod" network namespace with its
//! probe listener on the pod address, called from a neighbouring namespace (another pod). The
//! neighbour reaches `/ready` and `/metrics` but nothing that changes the proxy; the operator on the
//! control socket can, and is recorded. Root only (namespaces); a loud skip elsewhere, a failure
//! under `MESHGUARD_REQUIRE_NETNS=1`.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should fail the test at once

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::{SvidSpec, TestCa};
use support::Proc;
use support::netns::{Netns, require_or_skip};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const POD: &str = "10.231.0.1";
const NEIGHBOUR: &str = "10.231.0.2";
const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/payments";

/// `curl` from the neighbour: the status code and the body.
fn curl_from(ns: &Netns, method: &str, url: &str) -> (u16, String) {
    let out = ns.run(&[
        "curl",
        "-s",
        "-m",
        "5",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ]);
    status_and_body(&out)
}

fn status_and_body(out: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

fn write_config(dir: &Path, ca: &TestCa) -> std::path::PathBuf {
    let svid = ca.issue_with(&SvidSpec::new("/ns/ledger/sa/ledger"));
    let files = svid.write_to_dir(dir, &ca.bundle_pem()).unwrap();
    std::fs::write(dir.join("policy.toml"), "default = \"deny\"\n").unwrap();
    std::fs::write(dir.join("break-glass.toml"), "").unwrap();
    let config = format!(
        "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n\
         [admin]\nlisten = \"0.0.0.0:15000\"\n\
         [admin.control]\nsocket = \"admin.sock\"\naudit_log = \"admin-audit.log\"\n\
         [access_log]\npath = \"access.log\"\n\
         [lockout]\nthreshold = 3\n\
         [break_glass]\nfile = \"break-glass.toml\"\n\
         [[inbound]]\nlisten = \"0.0.0.0:15006\"\nforward_to = \"127.0.0.1:8080\"\npolicy = \"policy.toml\"\n",
        files.cert.display(),
        files.key.display(),
        files.bundle.display()
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn a_neighbouring_pod_reaches_the_probes_but_cannot_change_the_proxy() {
    if !require_or_skip(
        "a_neighbouring_pod_reaches_the_probes_but_cannot_change_the_proxy",
        &["curl"],
    ) {
        return;
    }
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &ca);
    let pod = Netns::new("mgpod");
    let neighbour = Netns::new("mgnb");
    pod.link(
        &[&format!("{POD}/24")],
        &neighbour,
        &[&format!("{NEIGHBOUR}/24")],
    );

    let _proxy = Proc(
        pod.command(&[BIN, "proxy", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probes = format!("http://{POD}:15000");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = neighbour
            .command(&[
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("{probes}/ready"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The read-only surface is there for the kubelet and Prometheus.
    assert_eq!(
        curl_from(&neighbour, "GET", &format!("{probes}/live")).0,
        200
    );
    let (status, metrics) = curl_from(&neighbour, "GET", &format!("{probes}/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains("meshguard_"), "{metrics}");

    // Nothing that changes or reveals the proxy answers over TCP, whatever the method.
    let grants_before = std::fs::read(dir.path().join("break-glass.toml")).unwrap();
    for (method, path) in [
        ("POST", "/break-glass"),
        ("GET", "/break-glass"),
        ("DELETE", "/lockout?source_ip=10.231.0.2&reason=x"),
        ("POST", "/lockout/clear?source_ip=10.231.0.2&reason=x"),
        ("GET", "/lockout"),
        ("GET", "/config"),
        ("GET", "/certs"),
    ] {
        let (status, body) = curl_from(&neighbour, method, &format!("{probes}{path}"));
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(
            body.contains("control socket only"),
            "{method} {path}: {body}"
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("break-glass.toml")).unwrap(),
        grants_before,
        "no grant was written from the network"
    );

    // A uid that is not listed cannot even connect: the socket is the proxy's uid's alone.
    let socket = dir.path().join("admin.sock");
    let stranger = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-m",
            "5",
        ])
        .arg("--unix-socket")
        .arg(&socket)
        .args(["-w", "\n%{http_code}", "http://admin/config"])
        .output()
        .unwrap();
    assert!(
        !stranger.status.success() || status_and_body(&stranger).0 == 403,
        "uid 65534 reached the control socket: {}",
        String::from_utf8_lossy(&stranger.stdout)
    );

    // The operator (the proxy's own uid) grants break-glass through the socket, with a reason.
    let granted = Command::new(BIN)
        .args([
            "policy",
            "break-glass",
            "--principal",
            PAYMENTS,
            "--for",
            "15m",
        ])
        .args([
            "--reason",
            "INC-77 payments down",
            "--issued-by",
            "oncall",
            "--admin-socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let grants = std::fs::read_to_string(dir.path().join("break-glass.toml")).unwrap();
    assert!(
        grants.contains(PAYMENTS) && grants.contains("INC-77"),
        "{grants}"
    );
    assert!(
        grants.contains("oncall via uid "),
        "the kernel's word is kept: {grants}"
    );

    // The audit log says who, what and why: refused first (if the stranger connected), then the grant.
    let audit = std::fs::read_to_string(dir.path().join("admin-audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let grant: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == "/break-glass" && r["method"] == "POST")
        .collect();
    assert_eq!(grant.len(), 2, "requested, then answered: {audit}");
    assert_eq!(grant[0]["outcome"], "requested", "{audit}");
    assert_eq!(grant[1]["outcome"], "answered", "{audit}");
    assert_eq!(grant[1]["status"], 201, "{audit}");
    assert_eq!(grant[0]["reason"], "INC-77 payments down", "{audit}");
    assert!(grant[0]["operator"]["uid"].is_u64(), "{audit}");
    assert!(
        !records
            .iter()
            .any(|r| r["query"].as_str().is_some_and(|q| q.contains("10.231"))),
        "the probe listener's 404s never reached the control audit: {audit}"
    );
}
