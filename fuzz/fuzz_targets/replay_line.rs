//! Access-log lines as `meshguard policy replay` reads them: any line (a truncated write, a
//! hand-edited file, another tool's JSON) is either replayed against the policy or reported, and
//! a line that parses is evaluated without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshguard_policy::PolicySet;
use meshguard_policy::replay::{parse_line, replay};

/// The bank demo's ledger policy: principals, methods, paths, business hours and a deny.
const POLICY: &str = include_str!("../../examples/bank/policies/ledger.toml");

fuzz_target!(|data: &[u8]| {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    let set = SET.get_or_init(|| {
        PolicySet::from_texts([("policy.toml", POLICY.to_owned())])
            .expect("the fixed policy compiles")
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let parsed = text
        .lines()
        .filter(|l| !l.trim().is_empty() && parse_line(l).is_ok())
        .count();
    let report = replay(set, text);
    assert_eq!(report.lines, lines);
    assert_eq!(
        report.replayed, parsed,
        "a line that parses was not replayed"
    );
    assert_eq!(
        report.replayed + report.skipped.len(),
        lines,
        "a line was lost"
    );
    assert!(report.skipped.iter().all(|(_, why)| !why.is_empty()));
});
