//! Decision cost: the native matcher over a 100-policy set (goal p99 <= 1 us) and the key-access
//! Rego policy on the RVM (goal median <= 10 us). Criterion reports means and medians; a short
//! pass first times single native evaluations into an HdrHistogram to print p50/p99/p99.9.

#![allow(clippy::unwrap_used)] // Bench setup unwraps: a failure is the bench failing.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::Criterion;
use jiff::Timestamp;
use meshguard_policy::{Outcome, PolicySet, Request, RequestDoc, Sources};

/// 100 policies: 60 allows for exact service identities (indexed), 20 allows by namespace prefix
/// with CIDRs and business hours, 10 denies, 10 dry-run or audit policies.
fn hundred_policies() -> PolicySet {
    let mut text = String::from("default = \"deny\"\n");
    for i in 0..60 {
        let _ = write!(
            text,
            "\n[[policy]]\nname = \"svc-{i}\"\naction = \"allow\"\nprincipals = [\"spiffe://bank.example/ns/ns{}/sa/svc{i}\"]\nmethods = [\"GET\", \"POST\"]\npaths = [\"/api/v1/svc{i}/*\", \"/healthz\"]\n",
            i % 10
        );
    }
    for i in 0..20 {
        let _ = write!(
            text,
            "\n[[policy]]\nname = \"ns-{i}\"\naction = \"allow\"\nprincipals = [\"spiffe://bank.example/ns/team{i}/*\"]\nsource_cidrs = [\"10.{i}.0.0/16\", \"fd00:{i}::/32\"]\nmethods = [\"GET\"]\npaths = [\"/reports/*\"]\nhours = {{ days = \"Mon-Fri\", from = \"08:00\", to = \"18:00\", tz = \"Europe/London\" }}\n"
        );
    }
    for i in 0..10 {
        let _ = write!(
            text,
            "\n[[policy]]\nname = \"deny-{i}\"\naction = \"deny\"\nmethods = [\"DELETE\"]\npaths = [\"/admin{i}/*\"]\nnot_source_cidrs = [\"10.250.0.0/16\"]\n"
        );
    }
    for i in 0..10 {
        let (action, enforce) = if i % 2 == 0 {
            ("audit", "true")
        } else {
            ("deny", "false")
        };
        let _ = write!(
            text,
            "\n[[policy]]\nname = \"observe-{i}\"\naction = \"{action}\"\nenforce = {enforce}\nhosts = [\"*.internal{i}\"]\nheaders = {{ \"x-debug\" = \"{i}\" }}\n"
        );
    }
    PolicySet::from_texts([("bench.toml", text)]).unwrap()
}

fn time() -> Timestamp {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

fn requests() -> Vec<(&'static str, Request<'static>)> {
    static HEADERS: &[(&str, &str)] = &[("x-role", "auditor"), ("user-agent", "bench")];
    static HEADERS_REF: &&[(&str, &str)] = &HEADERS;
    let base = |principal: &'static str, method: &'static str, path: &'static str, ip: &str| {
        let mut r = Request::connection(time());
        r.principal = Some(principal);
        r.method = Some(method);
        r.path = Some(path);
        r.host = Some("svc.bank.example");
        r.source_ip = Some(ip.parse().unwrap());
        r.port = Some(8443);
        r.headers = Some(HEADERS_REF);
        r
    };
    vec![
        (
            "indexed-allow",
            base(
                "spiffe://bank.example/ns/ns7/sa/svc57",
                "POST",
                "/api/v1/svc57/items",
                "10.1.2.3",
            ),
        ),
        (
            "prefix-allow",
            base(
                "spiffe://bank.example/ns/team19/sa/r",
                "GET",
                "/reports/q4",
                "10.19.3.4",
            ),
        ),
        (
            "default-deny",
            base(
                "spiffe://bank.example/ns/x/sa/y",
                "GET",
                "/nothing",
                "10.1.2.3",
            ),
        ),
        (
            "policy-deny",
            base(
                "spiffe://bank.example/ns/ns7/sa/svc57",
                "DELETE",
                "/admin9/x",
                "10.1.2.3",
            ),
        ),
    ]
}

fn key_access() -> (PolicySet, RequestDoc) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let set =
        PolicySet::compile(&Sources::read(&[dir.join("key-access.toml")], None).unwrap()).unwrap();
    let doc = RequestDoc::from_json(
        r#"{"principal": "spiffe://bank.example/ns/accounting/sa/reporting", "source_ip": "10.20.3.4",
            "port": 8443, "method": "POST", "path": "/v1/keys/financial-report/decrypt",
            "headers": {"x-role": "accountant"}, "time": "2026-11-23T10:00:00Z"}"#,
    )
    .unwrap();
    (set, doc)
}

fn bench(c: &mut Criterion) {
    let set = hundred_policies();
    assert_eq!(set.policies().len(), 100);
    let mut group = c.benchmark_group("native-100-policies");
    for (name, req) in requests() {
        group.bench_function(name, |b| {
            b.iter(|| black_box(set.evaluate(black_box(&req))))
        });
    }
    group.finish();

    let (ka, doc) = key_access();
    let req = doc.as_request(time());
    assert_eq!(ka.evaluate(&req).outcome, Outcome::Allow);
    let mut denied = doc.clone();
    denied.time = Some("2026-11-28T10:00:00Z".parse().unwrap());
    let denied_req = denied.as_request(time());
    assert_eq!(ka.evaluate(&denied_req).outcome, Outcome::Deny);
    let mut group = c.benchmark_group("rego-rvm-key-access");
    group.bench_function("allow", |b| {
        b.iter(|| black_box(ka.evaluate(black_box(&req))))
    });
    group.bench_function("deny-with-reasons", |b| {
        b.iter(|| black_box(ka.evaluate(black_box(&denied_req))))
    });
    group.finish();
}

/// Times single evaluations to report tail latency, which criterion does not.
#[allow(clippy::disallowed_methods)] // Measuring needs the clock; the library never reads it.
fn percentiles() {
    use std::time::Instant;
    let set = hundred_policies();
    let reqs = requests();
    let (ka, doc) = key_access();
    let ka_req = doc.as_request(time());
    let report = |label: &str, rounds: usize, f: &dyn Fn(usize)| {
        // Cost of reading the clock twice, subtracted from each sample.
        let overhead = (0..10_000)
            .map(|_| {
                let t = Instant::now();
                black_box(());
                t.elapsed().as_nanos() as u64
            })
            .min()
            .unwrap_or(0);
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for i in 0..rounds / 10 {
            f(i);
        }
        for i in 0..rounds {
            let t = Instant::now();
            f(i);
            let ns = (t.elapsed().as_nanos() as u64).saturating_sub(overhead);
            let _ = h.record(ns.max(1));
        }
        println!(
            "{label}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({rounds} samples, clock overhead {overhead} ns subtracted)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    };
    report("native 100 policies, mixed requests", 400_000, &|i| {
        black_box(set.evaluate(black_box(&reqs[i % reqs.len()].1)));
    });
    report("rego RVM key-access allow", 20_000, &|_| {
        black_box(ka.evaluate(black_box(&ka_req)));
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--bench") {
        percentiles();
    }
    bench(&mut c);
    c.final_summary();
}
