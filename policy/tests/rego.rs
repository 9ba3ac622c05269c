//! Rego through regorus's RVM: the shipped key-access example, deny reasons, v0 refusal and fail
//! closed on runtime errors.
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use meshguard_policy::rego::RegoPolicy;
use meshguard_policy::{Outcome, PolicyError, PolicySet, RequestDoc, Sources};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

fn key_access() -> PolicySet {
    let sources = Sources::read(&[examples().join("key-access.toml")], None).unwrap();
    PolicySet::compile(&sources).unwrap()
}

fn doc(json: &str) -> RequestDoc {
    RequestDoc::from_json(json).unwrap()
}

const GOOD: &str = r#"{"principal": "spiffe://bank.example/ns/accounting/sa/reporting",
    "source_ip": "10.20.3.4", "port": 8443, "method": "POST",
    "path": "/v1/keys/financial-report/decrypt", "headers": {"x-role": "accountant"},
    "time": "2026-11-23T10:00:00Z"}"#;

#[test]
fn key_access_allows_accounting_in_hours() {
    let set = key_access();
    let d = set.evaluate(&doc(GOOD).as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.policy.as_deref(), Some("financial-report-key-decrypt"));
}

#[test]
fn key_access_deny_reasons_come_through() {
    let set = key_access();
    let mut bad = doc(GOOD);
    bad.principal = Some("spiffe://bank.example/ns/payments/sa/payments".into());
    bad.source_ip = Some("192.168.1.1".parse().unwrap());
    bad.headers = Some([("x-role".to_owned(), "intern".to_owned())].into());
    // Saturday.
    bad.time = Some("2026-11-28T10:00:00Z".parse().unwrap());
    let d = set.evaluate(&bad.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Deny);
    let reasons: Vec<&str> = d.reasons.iter().map(|r| &**r).collect();
    assert_eq!(reasons[0], "no allow policy matched (default deny)");
    for expected in [
        "principal \"spiffe://bank.example/ns/payments/sa/payments\" is not an accounting service",
        "role \"intern\" may not decrypt the financial-report key",
        "source address \"192.168.1.1\" is outside the accounting networks",
        "outside business hours (Mon-Fri 09:00-17:00 Europe/London)",
    ] {
        assert!(
            reasons.contains(&expected),
            "missing {expected:?} in {reasons:?}"
        );
    }
}

#[test]
fn key_access_hours_follow_london_summer_time() {
    let set = key_access();
    let mut summer = doc(GOOD);
    // 08:30Z in July is 09:30 BST: inside business hours.
    summer.time = Some("2026-07-06T08:30:00Z".parse().unwrap());
    assert_eq!(
        set.evaluate(&summer.as_request(Timestamp::UNIX_EPOCH))
            .outcome,
        Outcome::Allow
    );
    // 16:30Z in July is 17:30 BST: outside.
    summer.time = Some("2026-07-06T16:30:00Z".parse().unwrap());
    let d = set.evaluate(&summer.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(
        d.reasons.iter().any(|r| r.contains("business hours")),
        "{:?}",
        d.reasons
    );
}

#[test]
fn missing_attributes_deny_with_reasons() {
    let set = key_access();
    let mut anon = doc(GOOD);
    anon.principal = None;
    anon.source_ip = None;
    anon.headers = None;
    let d = set.evaluate(&anon.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(
        d.reasons.iter().any(|r| r.contains("principal \"\"")),
        "{:?}",
        d.reasons
    );
}

#[test]
fn v0_module_is_refused() {
    let v0 = "package x\n\nallow {\n  input.method == \"GET\"\n}\n";
    let err = RegoPolicy::compile(Path::new("old.rego"), v0).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Rego { .. }));
    assert!(text.starts_with("old.rego:"), "{text}");
    assert!(text.contains("Rego v0"), "{text}");
    // Even with future.keywords imports, a v0-only form is refused rather than loaded.
    let v0_kw =
        "package x\nimport future.keywords.in\ndefault allow = false\nallow { \"a\" in {\"a\"} }\n";
    assert!(
        RegoPolicy::compile(Path::new("old.rego"), v0_kw)
            .unwrap_err()
            .to_string()
            .contains("v0")
    );
}

#[test]
fn syntax_errors_are_reported_not_mistaken_for_v0() {
    let err = RegoPolicy::compile(Path::new("bad.rego"), "package x\nallow if {\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("bad.rego:") && !text.contains("v0"),
        "{text}"
    );
}

#[test]
fn clock_reads_are_refused() {
    let src = "package x\nallow if { time.now_ns() > 0 }\n";
    let err = RegoPolicy::compile(Path::new("clock.rego"), src)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("clock.rego:2:") && err.contains("input.time"),
        "{err}"
    );
}

fn set_with_module(action: &str, module: &str) -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!("[[policy]]\nname = \"r\"\naction = \"{action}\"\nrego = \"m.rego\"\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("m.rego"), module).unwrap();
    PolicySet::compile(&Sources::read(&[policy], None).unwrap()).unwrap()
}

#[test]
fn runtime_error_denies_with_the_error_as_reason() {
    // A runaway loop hits the instruction budget: a VM error, which must deny, not allow. (The
    // RVM treats other builtin errors inside a rule body as that body failing, like OPA's
    // non-strict mode, which for `allow` also means no allow.)
    let runaway = "package x\nxs := numbers.range(1, 2000)\nallow if { count([1 | some a in xs; some b in xs]) > 0 }\n";
    let bad_time = "package x\nallow if { time.parse_rfc3339_ns(\"yesterday\") > 0 }\n";
    let set = set_with_module("allow", bad_time);
    let d = set.evaluate(&doc(r#"{"method": "GET"}"#).as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    let set = set_with_module("allow", runaway);
    let req = doc(r#"{"method": "GET", "path": "/", "time": "2026-11-23T10:00:00Z"}"#);
    let d = set.evaluate(&req.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(
        (d.outcome, d.policy.as_deref()),
        (Outcome::Deny, Some("r")),
        "{d:?}"
    );
    assert!(
        d.reasons[0].contains("Rego policy r failed"),
        "{:?}",
        d.reasons
    );
}

#[test]
fn non_boolean_allow_fails_closed() {
    let set = set_with_module("allow", "package x\nallow := \"yes\"\n");
    let d = set.evaluate(&doc(r#"{"method": "GET"}"#).as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.reasons[0].contains("boolean"), "{:?}", d.reasons);
}

#[test]
fn deny_policy_with_rego_uses_its_reasons() {
    let module = "package x\ndeny_reason contains \"no interns\" if { input.headers[\"x-role\"] == \"intern\" }\n";
    let set = set_with_module("deny", module);
    let intern = doc(r#"{"method": "GET", "headers": {"x-role": "intern"}}"#);
    let d = set.evaluate(&intern.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!((d.outcome, d.policy.as_deref()), (Outcome::Deny, Some("r")));
    assert_eq!(&*d.reasons[0], "no interns");
    let staff = doc(r#"{"method": "GET", "headers": {"x-role": "staff"}}"#);
    // Not denied by the Rego policy: the default decides (deny, but by no policy).
    assert_eq!(
        set.evaluate(&staff.as_request(Timestamp::UNIX_EPOCH))
            .policy,
        None
    );
}

#[test]
fn nondeterministic_builtins_are_refused_even_after_a_hash_in_a_string() {
    let refused = |src: &str| RegoPolicy::compile(Path::new("n.rego"), src).map(|_| ());
    for call in [
        "time.now_ns()",
        "rand.intn(\"k\", 10)",
        "uuid.rfc4122(\"k\")",
        "http.send({})",
        "opa.runtime()",
        "net.lookup_ip_addr(\"a\")",
    ] {
        let src = format!("package x\nallow if {{ x := \"#\"; y := `#\"`; {call} }}\n");
        let err = refused(&src).unwrap_err().to_string();
        assert!(err.starts_with("n.rego:2:"), "{call}: {err}");
    }
    // In a comment or a string, the names are harmless.
    let ok = "package x\n# time.now_ns()\nallow if { x := \"time.now_ns() \\\" rand.intn\"; x != \"\" }\n";
    refused(ok).unwrap();
    let raw = "package x\nallow if { x := `time.now_ns() \\`; x != \"\" }\n";
    refused(raw).unwrap();
}

#[test]
fn syntax_errors_carry_regorus_position_and_message() {
    let src = "package x\n\nallow if {\n  input.method == \"GET\"\n  x := \n}\n";
    let err = RegoPolicy::compile(Path::new("m.rego"), src).unwrap_err();
    let at = err.location().unwrap();
    assert!(at.line >= 5, "{err}");
    let text = err.to_string();
    assert!(!text.contains("-->"), "{text}");
    assert!(text.contains("not valid Rego v1: "), "{text}");
    let message = text.split("not valid Rego v1: ").nth(1).unwrap();
    assert!(
        message.len() > 5 && !message.starts_with("m.rego"),
        "{text}"
    );
    // A v0 module is refused at the place v1 parsing stopped.
    let v0 = "package x\n\nallow {\n  input.method == \"GET\"\n}\n";
    let at = RegoPolicy::compile(Path::new("m.rego"), v0)
        .unwrap_err()
        .location()
        .unwrap()
        .clone();
    assert_eq!(at.line, 3, "{at}");
}

#[test]
fn deep_nesting_is_refused_before_regorus_parses_it() {
    let src = format!("package x\n\nallow if {{\n1 <= {}", "{".repeat(40));
    let err = RegoPolicy::compile(Path::new("deep.rego"), &src).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("deep.rego:4:"), "{text}");
    assert!(text.contains("nest"), "{text}");
    // Brackets in strings and comments do not count.
    let quoted = format!(
        "package x\n# {}\nallow if {{ x := \"{}\"; x != \"\" }}\n",
        "{".repeat(40),
        "[".repeat(40)
    );
    RegoPolicy::compile(Path::new("q.rego"), &quoted).unwrap();
    let big = format!("package x\nallow if {{ true }}\n#{}\n", "a".repeat(2 << 20));
    let err = RegoPolicy::compile(Path::new("big.rego"), &big).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
}

#[test]
fn builtin_errors_in_a_deny_policy_fail_closed() {
    let direct =
        "package x\ndeny_reason contains \"bad\" if { time.parse_rfc3339_ns(\"yesterday\") > 0 }\n";
    let helper = "package x\nstamp := time.parse_rfc3339_ns(input.headers[\"x-when\"])\n\
                  deny_reason contains \"too old\" if { stamp < 0 }\n";
    let req = doc(r#"{"method": "GET", "headers": {"x-when": "soon"}}"#);
    for module in [direct, helper] {
        let set = set_with_module("deny", module);
        let d = set.evaluate(&req.as_request(Timestamp::UNIX_EPOCH));
        assert_eq!(
            (d.outcome, d.policy.as_deref()),
            (Outcome::Deny, Some("r")),
            "{module}: {d:?}"
        );
        assert!(
            d.reasons[0].contains("Rego policy r failed") && d.reasons[0].contains("parse"),
            "{:?}",
            d.reasons
        );
    }
    // Without the error the deny policy does not match and the default decides.
    let fine = doc(r#"{"method": "GET", "headers": {"x-when": "2026-11-23T10:00:00Z"}}"#);
    let set = set_with_module("deny", helper);
    let d = set.evaluate(&fine.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.policy, None, "{d:?}");
}
