//! `meshguard perf soak`, short, as CI runs it: the upstream and a sidecar pair as separate
//! processes, good traffic, every bad client of the security catalogue, rotations and policy
//! edits (broken ones among them), then the checks that the sidecars gave back what they took.
//! The full 10-minute run is `meshguard perf soak` by hand (docs/perf.md); this one keeps every
//! piece of it in CI so a regression in any of them turns the build red.
#![allow(clippy::unwrap_used)] // a failed setup step should fail the test at once

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");

#[test]
fn a_short_soak_passes_every_check_and_exercises_every_bad_client() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak");
    let output = Command::new(BIN)
        .args([
            "perf",
            "soak",
            "--duration",
            "20s",
            "--rotate-every",
            "5s",
            "--reload-every",
            "4s",
            "--out",
        ])
        .arg(&out)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    assert!(
        output.status.success(),
        "perf soak failed\nreport:\n{report}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], true, "{report}");
    for check in json["checks"].as_array().unwrap() {
        assert_eq!(check["passed"], true, "{check}");
    }
    // The run did what it says: good traffic flowed, credentials rotated, edits (good and broken)
    // landed, and each of the twelve bad kinds was tried and refused in one way or another.
    assert!(json["good_requests"].as_u64().unwrap() >= 3_000, "{report}");
    assert!(json["good_handshakes"].as_u64().unwrap() >= 150, "{report}");
    assert!(json["rotations"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(json["rotations_seen"], json["rotations"], "{report}");
    assert!(json["broken_edits"].as_u64().unwrap() >= 1, "{report}");
    let bad = json["bad_clients"].as_object().unwrap();
    assert_eq!(bad.len(), 12, "every bad kind must be tried: {bad:?}");
}
