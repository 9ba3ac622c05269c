//! Fuzz harnesses for the policy crate's parsers: every text an operator hands `meshguard policy`
//! (policy files, Rego modules, break-glass grants, test cases) must come back as a value or an
//! error that points into the text, never as a panic. The libFuzzer targets in `fuzz_targets/` and
//! the stable smoke test in `tests/smoke.rs` both call these functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use meshguard_policy::rego::RegoPolicy;
use meshguard_policy::{BreakGlass, PolicyError, PolicySet, Request, SourceFile, Sources, cases};

/// The policy file's name; a `rego = "m.rego"` key in it resolves to [`MODULE_PATH`].
const POLICY_PATH: &str = "fuzz/policy.toml";
const MODULE_PATH: &str = "fuzz/m.rego";
/// A valid module, so fuzzed policy files that name `m.rego` get past loading into compilation.
const MODULE: &str = "package fuzz\n\ndefault allow := false\n\nallow if input.method == \"GET\"\n\n\
                      deny_reason contains \"no interns\" if input.headers[\"x-role\"] == \"intern\"\n";

/// Policy file text -> compiled set, and the same text read as a grants file and a cases file.
pub fn policy_file(data: &[u8]) {
    // Sources are read with `read_to_string`: text that is not UTF-8 never reaches a parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = Sources {
        policies: vec![SourceFile {
            path: PathBuf::from(POLICY_PATH),
            text: text.to_owned(),
        }],
        rego: BTreeMap::from([(PathBuf::from(MODULE_PATH), MODULE.to_owned())]),
        break_glass: None,
    };
    match PolicySet::compile(&sources) {
        Ok(set) => {
            assert_eq!(set.revision().len(), 64, "revision is a hex SHA-256");
            for req in requests() {
                let decision = set.evaluate(&req);
                let _ = decision.to_json();
                assert_eq!(set.explain(&req).len(), set.policies().len());
            }
        }
        Err(error) => check_error(&error, text),
    }

    let path = Path::new("fuzz/grants.toml");
    match BreakGlass::parse(path, text) {
        Ok(grants) => {
            for g in grants.grants() {
                let _ = grants.active(&g.principal, g.not_before);
                let _ = g.to_toml();
            }
        }
        Err(error) => check_error(&error, text),
    }

    let path = Path::new("fuzz/cases.toml");
    if let Err(error) = cases::parse(path, text) {
        check_error(&error, text);
    }
}

/// Rego module text -> refused or compiled; a compiled module evaluates (or fails closed) without
/// panicking.
pub fn rego_module(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RegoPolicy::compile(Path::new("fuzz.rego"), text) {
        Ok(module) => {
            for req in requests() {
                // Errors are fine (the policy set turns them into denies); panics are not.
                let _ = module.evaluate(&req, true);
                let _ = module.evaluate(&req, false);
            }
        }
        Err(error) => {
            assert!(matches!(error, PolicyError::Rego { .. }), "{error:?}");
            check_error(&error, text);
        }
    }
}

/// An error reads as a sentence and, when it has a place, points into the text.
fn check_error(error: &PolicyError, text: &str) {
    let message = error.to_string();
    assert!(!message.trim().is_empty(), "an empty error message");
    if let Some(at) = error.location() {
        // A span may sit just past the last newline, hence `+ 1`.
        let lines = text.lines().count() + 1;
        assert!(
            (1..=lines).contains(&at.line) && at.column >= 1,
            "{message}: line {} of a {lines}-line text",
            at.line
        );
    }
}

/// An HTTP request and a connection, as the proxy builds them.
fn requests() -> [Request<'static>; 2] {
    static HEADERS: &[(&str, &str)] = &[("x-role", "intern"), ("authorization", "Bearer x")];
    let time: Timestamp = Timestamp::constant(1_795_428_000, 0); // 2026-11-23T10:00:00Z, a Monday
    let mut http = Request::connection(time);
    http.principal = Some("spiffe://bank.example/ns/payments/sa/payments");
    http.source_ip = Some(std::net::IpAddr::from([10, 10, 3, 4]));
    http.port = Some(8443);
    http.sni = Some("ledger");
    http.method = Some("GET");
    http.host = Some("ledger:8443");
    http.path = Some("/ledger/entries/1?x=1");
    http.headers = Some(&HEADERS);
    let mut l4 = Request::connection(time);
    l4.source_ip = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    l4.port = Some(7443);
    [http, l4]
}
