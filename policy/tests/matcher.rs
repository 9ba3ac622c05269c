//! Semantics of the native matcher: patterns, CIDRs, hours across DST and zones, not-forms, the L4
//! fail-closed rule, default modes, dry-run and audit, the principal index, break-glass.
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::net::IpAddr;

use jiff::Timestamp;
use meshguard_policy::{Outcome, PolicySet, Request, RequestDoc};
use proptest::prelude::*;

const PAY: &str = "spiffe://bank.example/ns/payments/sa/payments";
const REPORTING: &str = "spiffe://bank.example/ns/reporting/sa/reports";
const MONDAY_10Z: &str = "2026-11-23T10:00:00Z";

fn set(text: &str) -> PolicySet {
    PolicySet::from_texts([("p.toml", text.to_owned())]).unwrap()
}

fn http<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Request<'a> {
    let mut r = Request::connection(MONDAY_10Z.parse().unwrap());
    r.principal = principal;
    r.method = Some(method);
    r.path = Some(path);
    r.host = Some("ledger");
    r.source_ip = Some("10.0.0.5".parse().unwrap());
    r.port = Some(8080);
    r
}

fn l4<'a>(principal: Option<&'a str>) -> Request<'a> {
    let mut r = Request::connection(MONDAY_10Z.parse().unwrap());
    r.principal = principal;
    r.source_ip = Some("10.0.0.5".parse().unwrap());
    r.port = Some(8080);
    r
}

const CONTRACT: &str = r#"
default = "deny"

[[policy]]
name = "payments-write-entries"
action = "allow"
enforce = true
principals = ["spiffe://bank.example/ns/payments/sa/payments"]
methods = ["POST"]
paths = ["/ledger/entries", "/ledger/entries/*"]

[[policy]]
name = "reporting-read-in-hours"
action = "allow"
principals = ["spiffe://bank.example/ns/reporting/*"]
methods = ["GET"]
paths = ["/ledger/balances"]
hours = { days = "Mon-Fri", from = "09:00", to = "17:00", tz = "Europe/London" }
"#;

#[test]
fn contract_example_decides() {
    let s = set(CONTRACT);
    let d = s.evaluate(&http(Some(PAY), "POST", "/ledger/entries/42"));
    assert_eq!(
        (d.outcome, d.policy.as_deref()),
        (Outcome::Allow, Some("payments-write-entries"))
    );
    assert!(!d.should_log());
    let d = s.evaluate(&http(Some(PAY), "POST", "/ledger/entriesX"));
    assert_eq!((d.outcome, d.policy.as_deref()), (Outcome::Deny, None));
    assert_eq!(&*d.reasons[0], "no allow policy matched (default deny)");
    assert!(d.should_log());
    let d = s.evaluate(&http(
        Some(REPORTING),
        "GET",
        "/ledger/balances?as_of=today",
    ));
    assert_eq!(d.policy.as_deref(), Some("reporting-read-in-hours"));
    let mut night = http(Some(REPORTING), "GET", "/ledger/balances");
    night.time = "2026-11-23T18:00:00Z".parse().unwrap();
    assert_eq!(s.evaluate(&night).outcome, Outcome::Deny);
    assert_eq!(d.revision.len(), 64);
}

#[test]
fn deny_beats_allow_and_not_forms() {
    let s = set(r#"
[[policy]]
name = "allow-all-payments"
action = "allow"
principals = ["spiffe://bank.example/ns/payments/*"]

[[policy]]
name = "no-deletes-outside-admin-paths"
action = "deny"
methods = ["DELETE"]
not_paths = ["/admin/*"]
reason = "DELETE only under /admin"

[[policy]]
name = "only-internal-networks"
action = "deny"
not_source_cidrs = ["10.0.0.0/8", "fd00::/8"]
"#);
    assert_eq!(
        s.evaluate(&http(Some(PAY), "GET", "/x")).outcome,
        Outcome::Allow
    );
    let d = s.evaluate(&http(Some(PAY), "DELETE", "/x"));
    assert_eq!(
        (d.outcome, d.policy.as_deref()),
        (Outcome::Deny, Some("no-deletes-outside-admin-paths"))
    );
    assert_eq!(&*d.reasons[0], "DELETE only under /admin");
    assert_eq!(
        s.evaluate(&http(Some(PAY), "DELETE", "/admin/x")).outcome,
        Outcome::Allow
    );
    let mut outside = http(Some(PAY), "GET", "/x");
    outside.source_ip = Some("192.168.0.1".parse().unwrap());
    let d = s.evaluate(&outside);
    assert_eq!(d.policy.as_deref(), Some("only-internal-networks"));
    assert_eq!(&*d.reasons[0], "denied by policy only-internal-networks");
    outside.source_ip = Some("fd00::1".parse().unwrap());
    assert_eq!(s.evaluate(&outside).outcome, Outcome::Allow);
}

#[test]
fn l4_requests_fail_closed() {
    let s = set(r#"
[[policy]]
name = "allow-get"
action = "allow"
principals = ["spiffe://bank.example/*"]
methods = ["GET"]

[[policy]]
name = "allow-tcp"
action = "allow"
principals = ["spiffe://bank.example/ns/payments/*"]
ports = [5432]

[[policy]]
name = "deny-admin-path"
action = "deny"
principals = ["spiffe://bank.example/ns/reporting/*"]
paths = ["/admin/*"]
"#);
    // An allow that needs HTTP attributes does not match a connection.
    let d = s.evaluate(&l4(Some(PAY)));
    assert_eq!((d.outcome, d.policy.as_deref()), (Outcome::Deny, None));
    let mut pg = l4(Some(PAY));
    pg.port = Some(5432);
    assert_eq!(s.evaluate(&pg).policy.as_deref(), Some("allow-tcp"));
    // A deny that needs HTTP attributes does match a connection (fail closed)...
    let d = s.evaluate(&l4(Some(REPORTING)));
    assert_eq!(d.policy.as_deref(), Some("deny-admin-path"));
    // ...but not an HTTP request whose path does not match.
    let d = s.evaluate(&http(Some(REPORTING), "GET", "/ledger"));
    assert_eq!(
        (d.outcome, d.policy.as_deref()),
        (Outcome::Allow, Some("allow-get"))
    );
    // An unknown port makes an allow on ports miss and a deny on ports match.
    let mut unknown = l4(Some(PAY));
    unknown.port = None;
    assert_eq!(s.evaluate(&unknown).outcome, Outcome::Deny);
}

#[test]
fn default_modes() {
    let allow_auth = set("default = \"allow-authenticated\"\n");
    assert_eq!(allow_auth.evaluate(&l4(Some(PAY))).outcome, Outcome::Allow);
    let d = allow_auth.evaluate(&l4(None));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.reasons[0].contains("not authenticated"));
    let audit = set("default = \"audit\"\n");
    let d = audit.evaluate(&l4(None));
    assert_eq!(d.outcome, Outcome::Allow);
    assert!(d.default_audit && d.should_log());
    assert_eq!(set("").evaluate(&l4(Some(PAY))).outcome, Outcome::Deny);
}

#[test]
fn dry_run_and_audit_never_change_the_outcome() {
    let s = set(r#"
default = "allow-authenticated"

[[policy]]
name = "would-deny-reporting"
action = "deny"
enforce = false
principals = ["spiffe://bank.example/ns/reporting/*"]

[[policy]]
name = "would-allow-anon"
action = "allow"
enforce = false
not_principals = ["*"]

[[policy]]
name = "watch-writes"
action = "audit"
methods = ["POST", "PUT"]
"#);
    let d = s.evaluate(&http(Some(REPORTING), "POST", "/x"));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.dry_run.len(), 1);
    assert_eq!(
        (&*d.dry_run[0].policy, d.dry_run[0].outcome),
        ("would-deny-reporting", Outcome::Deny)
    );
    assert_eq!(
        d.audit.iter().map(|a| &**a).collect::<Vec<_>>(),
        ["watch-writes"]
    );
    assert!(d.should_log());
    let d = s.evaluate(&l4(None));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        (&*d.dry_run[0].policy, d.dry_run[0].outcome),
        ("would-allow-anon", Outcome::Allow)
    );
    assert!(
        d.audit.is_empty(),
        "an audit policy on methods does not match a connection"
    );
}

#[test]
fn trust_domains_sni_hosts_headers() {
    let s = set(r#"
[[policy]]
name = "partner"
action = "allow"
trust_domains = ["partner.example"]
sni = ["api.*"]
hosts = ["*.bank.example"]
headers = { "x-role" = "auditor" }
not_headers = { "x-debug" = "*" }
"#);
    let headers: &[(&str, &str)] = &[("X-Role", "Auditor")];
    let mut r = http(Some("spiffe://partner.example/svc/a"), "GET", "/");
    r.sni = Some("api.bank");
    r.host = Some("LEDGER.bank.example:443");
    r.headers = Some(&headers);
    assert_eq!(s.evaluate(&r).outcome, Outcome::Allow);
    let debug: &[(&str, &str)] = &[("x-role", "auditor"), ("x-debug", "1")];
    let mut r2 = r;
    r2.headers = Some(&debug);
    assert_eq!(s.evaluate(&r2).outcome, Outcome::Deny);
    let mut r3 = r;
    r3.principal = Some("spiffe://bank.example/svc/a");
    assert_eq!(s.evaluate(&r3).outcome, Outcome::Deny);
    let mut r4 = r;
    r4.sni = None;
    assert_eq!(s.evaluate(&r4).outcome, Outcome::Deny);
    let mut r5 = r;
    r5.headers = None;
    assert_eq!(s.evaluate(&r5).outcome, Outcome::Deny);
}

#[test]
fn explain_names_the_failing_field() {
    let s = set(CONTRACT);
    let explained = s.explain(&http(Some(PAY), "GET", "/ledger/entries"));
    let fields: Vec<String> = explained
        .iter()
        .map(|(p, v)| format!("{}={v:?}", p.name()))
        .collect();
    assert!(fields[0].contains("field: \"methods\""), "{fields:?}");
    assert!(fields[1].contains("field: \"principals\""), "{fields:?}");
}

#[test]
fn names_and_defaults_are_checked_across_files() {
    let a = "default = \"deny\"\n[[policy]]\nname = \"x\"\naction = \"allow\"\n".to_owned();
    let b = "default = \"audit\"\n".to_owned();
    let e = PolicySet::from_texts([("a.toml", a.clone()), ("b.toml", b)])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("b.toml:1:11:") && e.contains("a.toml:1:11"),
        "{e}"
    );
    let e = PolicySet::from_texts([("a.toml", a.clone()), ("c.toml", a)])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("c.toml:3:8:") && e.contains("already defined at a.toml:3:8"),
        "{e}"
    );
}

#[test]
fn break_glass_turns_a_deny_into_a_marked_allow_until_it_expires() {
    use meshguard_policy::{Grant, SourceFile, Sources};
    let now: Timestamp = MONDAY_10Z.parse().unwrap();
    let grant = Grant::new(
        PAY,
        jiff::SignedDuration::from_mins(15),
        "INC-7: restore ledger",
        now,
    )
    .unwrap();
    let mut sources = Sources::from_texts([(
        "p.toml".into(),
        "[[policy]]\nname = \"no-deletes\"\naction = \"deny\"\nmethods = [\"DELETE\"]\n".to_owned(),
    )]);
    sources.break_glass = Some(SourceFile {
        path: "grants.toml".into(),
        text: grant.to_toml(),
    });
    let s = PolicySet::compile(&sources).unwrap();
    let mut r = http(Some(PAY), "DELETE", "/x");
    let d = s.evaluate(&r);
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(
        d.break_glass.as_deref(),
        Some("break-glass: INC-7: restore ledger")
    );
    assert_eq!(d.policy.as_deref(), Some("no-deletes"));
    assert!(d.should_log());
    r.time = "2026-11-23T10:15:00Z".parse().unwrap();
    let d = s.evaluate(&r);
    assert_eq!((d.outcome, d.break_glass), (Outcome::Deny, None));
    // Only the named principal.
    let d = s.evaluate(&http(Some(REPORTING), "DELETE", "/x"));
    assert_eq!(d.outcome, Outcome::Deny);
}

// === properties ===

proptest! {
    /// The indexed evaluation agrees with a brute-force reading of the rules: deny if any deny
    /// matches, else allow if any allow matches, else default deny.
    #[test]
    fn index_agrees_with_brute_force(
        who in 0usize..6, method in 0usize..3, ip in any::<[u8; 4]>(), port in 0u16..4,
        is_l4 in any::<bool>(),
    ) {
        let principals = [
            "spiffe://bank.example/ns/a/sa/x", "spiffe://bank.example/ns/a/sa/y",
            "spiffe://bank.example/ns/b/sa/x", "spiffe://other.example/ns/a/sa/x",
            "spiffe://bank.example/ns/c/sa/z",
        ];
        let methods = ["GET", "POST", "DELETE"];
        let s = set(r#"
[[policy]]
name = "a1"
action = "allow"
principals = ["spiffe://bank.example/ns/a/sa/x", "spiffe://bank.example/ns/b/sa/x"]
methods = ["GET", "POST"]

[[policy]]
name = "a2"
action = "allow"
principals = ["*/sa/y"]
source_cidrs = ["10.0.0.0/8"]

[[policy]]
name = "d1"
action = "deny"
principals = ["spiffe://bank.example/ns/b/sa/x"]
methods = ["POST"]

[[policy]]
name = "d2"
action = "deny"
not_trust_domains = ["bank.example"]
ports = [1, 2]

[[policy]]
name = "a3"
action = "allow"
ports = [3]
"#);
        let principal = principals.get(who).copied();
        let mut r = Request::connection(MONDAY_10Z.parse().unwrap());
        r.principal = principal;
        r.source_ip = Some(IpAddr::from(ip));
        r.port = Some(port);
        if !is_l4 {
            r.method = Some(methods[method]);
            r.path = Some("/");
        }
        let m = r.method;
        let td = principal.map(|p| p.split('/').nth(2).unwrap());
        // d1 needs a method: on L4 it matches (fail closed).
        let d1 = principal == Some(principals[2]) && m.is_none_or(|m| m == "POST");
        let d2 = td != Some("bank.example") && (port == 1 || port == 2);
        let a1 = (principal == Some(principals[0]) || principal == Some(principals[2]))
            && m.is_some_and(|m| m == "GET" || m == "POST");
        let a2 = principal.is_some_and(|p| p.ends_with("/sa/y")) && ip[0] == 10;
        let a3 = port == 3;
        let expected = if d1 || d2 { Outcome::Deny } else if a1 || a2 || a3 { Outcome::Allow } else { Outcome::Deny };
        prop_assert_eq!(s.evaluate(&r).outcome, expected);
    }

    /// Prefix and suffix patterns agree with `starts_with` / `ends_with`, and `*` matches all.
    #[test]
    fn patterns_agree_with_std(pat in "[a-c/]{0,4}", value in "[a-c/]{0,6}") {
        let prefix = meshguard_policy::Pattern::parse(&format!("/{pat}*")).unwrap();
        let suffix = meshguard_policy::Pattern::parse(&format!("*{pat}/")).unwrap();
        let exact = meshguard_policy::Pattern::parse(&format!("/{pat}")).unwrap();
        let v = format!("/{value}/");
        prop_assert_eq!(prefix.matches(&v), v.starts_with(&format!("/{pat}")));
        prop_assert_eq!(suffix.matches(&v), v.ends_with(&format!("{pat}/")));
        prop_assert_eq!(exact.matches(&v), v == format!("/{pat}"));
        prop_assert!(meshguard_policy::Pattern::parse("*").unwrap().matches(&v));
    }

    /// A CIDR condition agrees with a bitmask comparison.
    #[test]
    fn cidr_agrees_with_masks(ip in any::<u32>(), net in any::<u32>(), len in 0u8..=32) {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let base = std::net::Ipv4Addr::from(net & mask);
        let s = set(&format!("[[policy]]\nname = \"n\"\naction = \"allow\"\nsource_cidrs = [\"{base}/{len}\"]\n"));
        let mut r = l4(None);
        r.source_ip = Some(IpAddr::from(std::net::Ipv4Addr::from(ip)));
        let inside = ip & mask == net & mask;
        prop_assert_eq!(s.evaluate(&r).outcome == Outcome::Allow, inside);
    }

    /// Any instant: a Mon-Fri 09:00-17:00 London window agrees with jiff's own zoned reading.
    #[test]
    fn hours_agree_with_zoned_time(secs in 1_700_000_000i64..1_900_000_000i64) {
        let t = Timestamp::from_second(secs).unwrap();
        let s = set(CONTRACT);
        let mut r = http(Some(REPORTING), "GET", "/ledger/balances");
        r.time = t;
        let z = t.in_tz("Europe/London").unwrap();
        let weekday = z.weekday().to_monday_one_offset() <= 5;
        let inside = weekday && (9..17).contains(&z.hour());
        prop_assert_eq!(s.evaluate(&r).outcome == Outcome::Allow, inside);
    }
}

#[test]
fn request_doc_round_trips_through_evaluation() {
    let doc = RequestDoc::from_json(&format!(
        r#"{{"principal": "{PAY}", "method": "POST", "path": "/ledger/entries", "time": "{MONDAY_10Z}"}}"#
    ))
    .unwrap();
    let d = set(CONTRACT).evaluate(&doc.as_request(Timestamp::UNIX_EPOCH));
    assert_eq!(d.outcome, Outcome::Allow);
    let json = d.to_json();
    assert_eq!(json["outcome"], "allow");
    assert_eq!(json["policy"], "payments-write-entries");
    assert_eq!(json["reasons"], serde_json::json!([]));
    assert_eq!(json["dry_run"], serde_json::json!([]));
}

#[test]
fn ipv4_mapped_ipv6_sources_match_ipv4_cidrs() {
    let s = set(r#"
default = "allow-authenticated"

[[policy]]
name = "block-test-net"
action = "deny"
source_cidrs = ["192.0.2.0/24"]

[[policy]]
name = "mapped-form-in-the-file"
action = "deny"
source_cidrs = ["::ffff:198.51.100.0/120"]
"#);
    for (ip, expect) in [
        ("192.0.2.7", Outcome::Deny),
        ("::ffff:192.0.2.7", Outcome::Deny),
        ("198.51.100.9", Outcome::Deny),
        ("::ffff:198.51.100.9", Outcome::Deny),
        ("203.0.113.1", Outcome::Allow),
        ("::ffff:203.0.113.1", Outcome::Allow),
    ] {
        let mut r = l4(Some(PAY));
        r.source_ip = Some(ip.parse::<IpAddr>().unwrap());
        assert_eq!(s.evaluate(&r).outcome, expect, "{ip}");
    }
    let allow = set(
        "[[policy]]\nname = \"a\"\naction = \"allow\"\nnot_source_cidrs = [\"192.0.2.0/24\"]\n",
    );
    let mut r = l4(Some(PAY));
    r.source_ip = Some("::ffff:192.0.2.7".parse::<IpAddr>().unwrap());
    assert_eq!(allow.evaluate(&r).outcome, Outcome::Deny);
}

#[test]
fn repeated_and_non_text_headers_are_read_one_way() {
    use meshguard_policy::{DecisionRecord, RequestDoc};
    let s = set(r#"
[[policy]]
name = "auditors"
action = "allow"
headers = { "x-role" = "auditor" }
not_headers = { "x-debug" = "*" }
"#);
    // A header matches when any of its values matches, whichever comes first.
    let both: &[(&str, &str)] = &[("x-role", "intern"), ("X-Role", "auditor")];
    let mut r = http(Some(PAY), "GET", "/");
    r.headers = Some(&both);
    assert_eq!(s.evaluate(&r).outcome, Outcome::Allow);
    let reversed: &[(&str, &str)] = &[("x-role", "auditor"), ("x-role", "intern")];
    r.headers = Some(&reversed);
    assert_eq!(s.evaluate(&r).outcome, Outcome::Allow);
    // The Rego input and the log see every value, joined with ", " as HTTP does.
    let doc: RequestDoc = r.to_doc();
    assert_eq!(doc.headers.unwrap()["x-role"], "auditor, intern");
    let log = DecisionRecord::new(&r, &s.evaluate(&r), 0, &[]);
    assert_eq!(log.input.headers["x-role"], "auditor, intern");

    // A value that is not text is present: it matches `*` and never a literal.
    let decide = |pairs: &[(&'static str, &'static [u8])]| {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        let mut r = http(Some(PAY), "GET", "/");
        r.headers = Some(&map);
        s.evaluate(&r).outcome
    };
    assert_eq!(
        decide(&[("x-role", b"auditor"), ("x-debug", b"\xff\xfe")]),
        Outcome::Deny,
        "x-debug is present"
    );
    assert_eq!(decide(&[("x-role", b"auditor")]), Outcome::Allow);
    assert_eq!(
        decide(&[("x-role", b"\xffx"), ("x-role", b"auditor")]),
        Outcome::Allow
    );
    assert_eq!(
        decide(&[("x-role", b"auditor\xff")]),
        Outcome::Deny,
        "not text is not \"auditor\""
    );
}
