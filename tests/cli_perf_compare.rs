//! `meshguard perf compare --smoke` as CI runs it: the whole topology comes up on loopback (the
//! upstream, two meshguard sidecars, and each peer proxy that is installed), every scenario runs
//! once, briefly, against every target, and the report files are written. It checks that each
//! scenario completes without errors, never how fast (timings belong to the committed report).
#![allow(clippy::unwrap_used)] // a failed setup step should fail the test at once

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");

#[test]
fn smoke_runs_every_scenario_against_every_target_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let output = Command::new(BIN)
        .args(["perf", "compare", "--smoke", "--out"])
        .arg(&out)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "perf compare --smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("smoke: every scenario completed"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["meta"]["smoke"], true);
    let scenarios: Vec<&str> = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    for key in [
        "idle",
        "handshake",
        "keepalive",
        "latency-200",
        "bulk",
        "resilience",
    ] {
        assert!(
            scenarios.contains(&key),
            "scenario {key} missing: {scenarios:?}"
        );
    }
    // meshguard itself is always there; peers are there only when installed, and say so.
    for scenario in json["scenarios"].as_array().unwrap() {
        let targets: Vec<&str> = scenario["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap())
            .collect();
        let expected_meshguard = match scenario["key"].as_str().unwrap() {
            "bulk" => "meshguard-pair",
            _ => "meshguard-inbound",
        };
        assert!(targets.contains(&expected_meshguard), "{scenario}");
    }
    // A replica SIGKILLed mid-run costs meshguard no request (peers' failures are figures).
    let resilience = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "resilience")
        .unwrap();
    let ours = resilience["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "meshguard-inbound")
        .unwrap();
    assert_eq!(ours["median"]["failed_during_fault"], 0, "{ours}");
    for info in json["meta"]["targets"].as_array().unwrap() {
        if let Some(reason) = info["skipped"].as_str() {
            eprintln!("SKIPPED target {}: {reason}", info["key"]);
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("meshguard-inbound"), "{md}");
    assert!(
        out.join("latency-200.svg").exists() || md.contains(".svg"),
        "{md}"
    );
}

#[test]
fn a_baseline_that_does_not_parse_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = dir.path().join("old-report.json");
    std::fs::write(&baseline, "{}").unwrap();
    let out = dir.path().join("report");
    let output = Command::new(BIN)
        .args([
            "perf",
            "compare",
            "--smoke",
            "--peers",
            "none",
            "--baseline",
        ])
        .arg(&baseline)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("old-report.json"), "{stderr}");
    assert!(stderr.contains("not a report.json"), "{stderr}");
    // Refused up front: nothing measured, no report directory made.
    assert!(!out.exists());
}
