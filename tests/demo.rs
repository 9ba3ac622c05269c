//! `meshguard demo` end to end with the real binary: a CA in a SoftHSM2 token, sidecars as child
//! processes, the scripted requests, renewal, the audit trail and the perf run, all on 127.0.0.1.
//!
//! The demo exits 0 when every step behaved as scripted, 1 when one did not, and 2 when every step
//! that ran behaved but pieces of meshguard it needs are not built yet (it lists them). This test
//! fails on 1 always, and on 2 when `MESHGUARD_DEMO_REQUIRE_ALL=1`; otherwise it prints the missing
//! pieces loudly and passes.

use std::process::Command;
use std::time::Instant;

#[test]
fn the_bank_demo_behaves_as_scripted() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run meshguard demo");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let code = output.status.code();
    assert_ne!(
        code,
        Some(1),
        "the demo reported steps that did not behave as scripted:\n{stdout}\n{stderr}"
    );
    assert!(
        code == Some(0) || code == Some(2),
        "the demo failed to run ({:?}):\n{stdout}\n{}",
        output.status,
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );

    // The transcript names the pieces it shows, from the real run.
    assert!(stdout.contains("== Summary =="), "no summary table");
    assert!(
        stdout.contains("audit trail intact"),
        "the CA audit trail did not verify"
    );
    assert!(!stdout.contains("NOT AS SCRIPTED"));
    let hsm_required = std::env::var("MESHGUARD_REQUIRE_HSM").is_ok_and(|v| v == "1");
    if hsm_required {
        assert!(
            stdout.contains("[HSM (PKCS#11)]"),
            "MESHGUARD_REQUIRE_HSM=1 but the CA key is not in SoftHSM2"
        );
    }
    assert!(dir.path().join("ledger.access.log").exists());
    // Bounded by design (every wait in the demo has a limit); reported, not asserted (no timed
    // assertions in tests).
    eprintln!("the demo took {elapsed:?}");

    if code == Some(2) {
        let missing: Vec<&str> = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("missing:"))
            .collect();
        eprintln!(
            "\n!!! the demo ran, but these pieces of meshguard are not built yet:\n{}\n",
            missing.join("\n")
        );
        assert!(
            !missing.is_empty(),
            "exit 2 without a list of missing pieces"
        );
        let require_all = std::env::var("MESHGUARD_DEMO_REQUIRE_ALL").is_ok_and(|v| v == "1");
        assert!(
            !require_all,
            "MESHGUARD_DEMO_REQUIRE_ALL=1 and pieces are missing"
        );
    }
}
