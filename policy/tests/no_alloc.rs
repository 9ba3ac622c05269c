//! The native hot path allocates nothing: dhat's counting allocator watches `evaluate` over
//! allows, denies (policy and default), dry-run and audit matches, L4 and HTTP requests.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use meshguard_policy::{Outcome, PolicySet, Request};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn native_evaluation_does_not_allocate() {
    let set = PolicySet::from_texts([(
        "p.toml",
        r#"
default = "allow-authenticated"

[[policy]]
name = "payments"
action = "allow"
principals = ["spiffe://bank.example/ns/payments/sa/payments"]
methods = ["POST"]
paths = ["/ledger/*"]
hosts = ["ledger*"]
headers = { "x-role" = "writer" }

[[policy]]
name = "reporting"
action = "allow"
principals = ["spiffe://bank.example/ns/reporting/*"]
source_cidrs = ["10.0.0.0/8"]
hours = { days = "Mon-Fri", from = "09:00", to = "17:00", tz = "Europe/London" }

[[policy]]
name = "no-deletes"
action = "deny"
methods = ["DELETE"]

[[policy]]
name = "dry"
action = "deny"
enforce = false
not_trust_domains = ["bank.example"]

[[policy]]
name = "audit"
action = "audit"
paths = ["/ledger/*"]
"#
        .to_owned(),
    )])
    .unwrap();
    let headers: &[(&str, &str)] = &[("x-role", "writer")];
    let mut http = Request::connection("2026-11-23T10:00:00Z".parse().unwrap());
    http.principal = Some("spiffe://bank.example/ns/payments/sa/payments");
    http.method = Some("POST");
    http.path = Some("/ledger/entries?x=1");
    http.host = Some("ledger:8443");
    http.headers = Some(&headers);
    http.source_ip = Some("10.1.2.3".parse().unwrap());
    let mut delete = http;
    delete.method = Some("DELETE");
    let mut partner = http;
    partner.principal = Some("spiffe://partner.example/x");
    let mut l4 = Request::connection(http.time);
    l4.principal = Some("spiffe://bank.example/ns/reporting/sa/r");
    l4.source_ip = Some("10.9.9.9".parse().unwrap());
    let anonymous = Request::connection(http.time);

    let cases = [
        (&http, Outcome::Allow),
        (&delete, Outcome::Deny),
        (&partner, Outcome::Allow),
        (&l4, Outcome::Deny),
        (&anonymous, Outcome::Deny),
    ];
    // Warm up lazily initialised state (tz caches and the like) outside the count.
    for (req, _) in cases {
        drop(set.evaluate(req));
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().total_blocks;
    let mut outcomes = Vec::with_capacity(0);
    for _ in 0..100 {
        for (req, expected) in cases {
            let d = set.evaluate(req);
            if d.outcome != expected {
                outcomes.push(d.outcome); // never taken when the outcomes are right
            }
        }
    }
    let allocated = dhat::HeapStats::get().total_blocks - before;
    assert!(outcomes.is_empty(), "unexpected outcomes");
    assert_eq!(allocated, 0, "evaluate allocated {allocated} blocks");
    // The decisions carried what they should, with no allocation.
    let d = set.evaluate(&partner);
    assert_eq!(d.dry_run.len(), 1);
    assert_eq!(d.audit.len(), 1);
}
