//! Helpers shared by the binary's integration tests.
#![allow(dead_code)] // each test file uses its own part

pub(crate) mod netns;
#[path = "../../proxy/tests/tools/mod.rs"]
pub(crate) mod tools;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use meshguard_identity::test_ca::{SvidSpec, TestCa};

/// Issues an SVID for `path` from `ca`, writes it and the bundle into `dir`, and returns the
/// `[identity]` section of a sidecar config that reads them.
pub(crate) fn write_identity(ca: &TestCa, dir: &Path, path: &str) -> String {
    let svid = ca.issue_with(&SvidSpec::new(path));
    let files = svid.write_to_dir(dir, &ca.bundle_pem()).unwrap();
    format!(
        "[identity]\nfiles = {{ cert = \"{}\", key = \"{}\", bundle = \"{}\" }}\n",
        files.cert.display(),
        files.key.display(),
        files.bundle.display()
    )
}

/// Kills the child on drop, so a failing test leaves no process behind (and, inside a network
/// namespace, none holding it after the namespace is gone).
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 30 s) until the sidecar in `ns` answers `ready` on its admin port.
pub(crate) fn wait_sidecar_ready(ns: &netns::Netns) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ns
            .command(&["curl", "-s", "http://127.0.0.1:15000/ready"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).starts_with("ready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar in {} never became ready",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first access-log line in `path` that `pred` accepts, waiting (at most 20 s) for it to be
/// written.
pub(crate) fn wait_for_log_line(
    path: &Path,
    pred: &dyn Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|l| pred(l))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no matching line in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
