//! The CA's audit trail is on disk before `meshguard ca issue` (or an API call) reports success:
//! watched with strace, every issuance syncs `audit.log` and `audit.head` before the SVID is
//! written out. An unsynced trail loses the last records an auditor needs on a power cut.

#![allow(clippy::unwrap_used)] // test helpers

mod support;

use std::path::Path;
use std::process::Command;

const TD: &str = "bank.example";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn meshguard(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_issuance_syncs_the_trail_and_its_head_before_writing_the_svid() {
    if !support::tools::require(
        "an_issuance_syncs_the_trail_and_its_head_before_writing_the_svid",
        &["strace"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = format!("file:{}", dir.path().join("root.key").display());
    meshguard(&[
        "ca",
        "init",
        "--state",
        s(&state),
        "--trust-domain",
        TD,
        "--key",
        &key,
    ]);
    let trace = dir.path().join("trace");
    let out = dir.path().join("out");
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,openat"])
        .args(["-o", s(&trace), env!("CARGO_BIN_EXE_meshguard")])
        .args(["ca", "issue", "--state", s(&state), "--out", s(&out)])
        .args(["--spiffe-id", "spiffe://bank.example/ns/a/sa/b"])
        .status()
        .unwrap();
    assert!(status.success());
    let trace = std::fs::read_to_string(&trace).unwrap();
    let position = |needle: &str| {
        trace
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in the trace:\n{trace}"))
    };
    let synced_log = position("audit.log>)");
    let synced_head = position("audit.head>)");
    let wrote_svid = position("svid.pem");
    assert!(
        trace.lines().nth(synced_log).unwrap().contains("sync"),
        "{trace}"
    );
    assert!(
        synced_log < wrote_svid && synced_head < wrote_svid,
        "the trail must be on disk before the SVID leaves:\n{trace}"
    );
}
