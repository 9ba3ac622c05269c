//! The demo from start to end: CA, apps, sidecars, the script, the policy engine with a fixed
//! clock, renewal, the audit trail and the perf figures; then the summary and the exit verdict.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::apps::{self, App};
use crate::ca::{self, RootKey};
use crate::checks;
use crate::process::Meshguard;
use crate::script::{self, Expect, Mesh, Request};
use crate::topology::{self, Sidecar, id_of};
use crate::transcript::Transcript;

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `meshguard` binary the sidecars and the CA run as.
    pub meshguard: PathBuf,
    /// Where to keep configs, logs and the CA state; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Skip the 2 x 5 s perf run.
    pub skip_perf: bool,
    /// Run every sidecar at L4 (per-connection decisions) even when the L7 proxy is there.
    pub l4_only: bool,
    /// Use a software root key even when SoftHSM2 is installed (shows the labelled fallback).
    pub software_key: bool,
}

/// How the run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every step behaved as scripted and every piece was there.
    AsScripted,
    /// Every step that ran behaved as scripted, but pieces of meshguard were missing (listed).
    Incomplete,
    /// Some step did not behave as scripted.
    Unexpected,
}

impl Verdict {
    /// The process exit code: 0, 2 (incomplete) or 1 (unexpected).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::AsScripted => 0,
            Self::Unexpected => 1,
            Self::Incomplete => 2,
        }
    }
}

/// Runs the demo, printing the transcript.
pub fn run(options: &Options) -> anyhow::Result<Verdict> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(options))
}

async fn demo(options: &Options) -> anyhow::Result<Verdict> {
    let dir = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => tempfile::Builder::new()
            .prefix("meshguard-demo-")
            .tempdir()?
            .keep(),
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut mg = Meshguard::new(options.meshguard.clone(), logs);
    let mut t = Transcript::default();
    println!(
        "meshguard bank demo: everything runs on 127.0.0.1; files are in {}",
        dir.display()
    );

    // === The CA ===
    t.section("1. A CA whose root key lives in an HSM");
    let mut ca = ca::start(&mut mg, &dir, options.software_key, &mut t)?;
    match &ca.root_key {
        RootKey::Hsm { module } => t.note(&format!(
            "root key: generated inside SoftHSM2 ({}), sensitive and non-extractable",
            module.display()
        )),
        RootKey::Software => t.warn("root key: SOFTWARE key file (development only)"),
    }
    t.note(&format!(
        "SVIDs live {} (not_before backdated a tenth of that for clock skew): every sidecar renews at half-life, over mTLS, during the run",
        ca::SVID_TTL
    ));

    // === L7 or L4 ===
    let (l7, why_not) = topology::config_supported(&mg, &dir, "http", "")?;
    let l7 = l7 && !options.l4_only;
    let protocol = if l7 { "http" } else { "tcp" };
    if options.l4_only {
        t.note("--l4: every sidecar decides per connection (L4); per-request rules run on the policy engine only");
    } else if !l7 {
        t.missing(&format!(
            "the L7 HTTP proxy (`protocol = \"http\"`): sidecars run at L4, deciding per connection; \
             per-request steps run on the policy engine only ({})",
            why_not.lines().last().unwrap_or("")
        ));
    }

    let probe = |extra: &str| topology::config_supported(&mg, &dir, "tcp", extra).map(|r| r.0);
    let features = topology::Features {
        l7,
        decision_logs: probe(&topology::decision_log_section(&dir.join("probe.log")))?,
        lockout: probe(topology::LOCKOUT_SECTION)?,
        break_glass: probe(&topology::break_glass_section(&dir, "probe"))?,
    };

    // === Apps and sidecars ===
    t.section("2. Apps behind sidecars; identities from the CA by bootstrap token");
    let mut app_list: Vec<App> = Vec::new();
    for name in ["ledger", "keys", "core-banking", "payments", "reporting"] {
        app_list.push(apps::start(name).await?);
    }
    let app_of = |name: &str| app_list.iter().find(|a| a.name == name);
    let mut app_addrs = BTreeMap::new();
    for (workload, app) in [
        ("ledger", "ledger"),
        ("keys", "keys"),
        ("gateway", "core-banking"),
        ("payments", "payments"),
        ("reporting", "reporting"),
    ] {
        app_addrs.insert(workload, app_of(app).context("app missing")?.addr);
    }
    let mut sidecars = topology::start(&mg, &ca, &dir, protocol, &features, &app_addrs)?;
    topology::wait_ready(&mut sidecars, Duration::from_secs(30)).await?;
    for s in &sidecars {
        t.note(&format!(
            "{:<9} sidecar ready: {} (inbound {}, admin {}, config {})",
            s.workload.name,
            s.workload.id,
            s.inbound,
            s.admin,
            s.config
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
    }
    t.note("core-banking is a legacy plain-HTTP host: it has no sidecar and is reached through the gateway");
    let bootstraps = ca
        .audit_events()
        .iter()
        .filter(|(e, o, _)| e == "bootstrap" && o == "issued")
        .count();
    t.note(&format!(
        "CA audit trail: {bootstraps} SVIDs issued against one-time bootstrap tokens"
    ));

    // === The script ===
    t.section(if l7 {
        "3. Scripted requests (decided per request by each inbound sidecar)"
    } else {
        "3. Scripted requests (decided per connection: L4)"
    });
    let apps_by_target: BTreeMap<&'static str, &App> = [
        ("ledger", app_of("ledger")),
        ("keys", app_of("keys")),
        ("gateway", app_of("core-banking")),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let mesh = Mesh {
        sidecars: sidecars.iter().map(|s| (s.workload.name, s)).collect(),
        apps: apps_by_target,
        protocol,
    };
    let steps = if l7 { l7_script() } else { l4_script() };
    for step in &steps {
        script::run(&mesh, step, &mut t).await;
    }
    let marketing = dir.join("marketing-svid");
    ca.issue(&mg, "spiffe://bank.example/ns/marketing/sa/web", &marketing)?;
    let ledger = mesh.sidecars["ledger"];
    checks::curl_at_ledger(ledger, "curl", None, &mut t).await;
    checks::curl_at_ledger(ledger, "marketing", Some(&marketing), &mut t).await;
    if features.break_glass {
        break_glass_live(&mg, &mesh, l7, &mut t).await;
    } else {
        t.missing("break-glass in the running sidecars (no `[break_glass]` setting in this proxy build); shown on the policy engine below");
    }
    if features.lockout {
        script::lockout(&mesh, "reporting", topology::LOCKOUT_ON, 3, &mut t).await;
    } else {
        t.missing("lockout after repeated denials (no `[lockout]` setting in this proxy build)");
    }

    // === The policy engine with a fixed clock ===
    t.section("4. The same policy files on the policy engine, with a fixed clock");
    engine_steps(&mg, &dir, &mut t)?;

    // === Renewal ===
    t.section("5. Renewal");
    wait_for_renewals(&ca, &sidecars, &mut t).await;

    // === Perf ===
    t.section("6. Sidecar pair against direct");
    if options.skip_perf {
        t.note("skipped (--skip-perf)");
    } else if let (Some(ledger_app), Some(&pair)) = (
        app_of("ledger"),
        mesh.sidecars["payments"].outbound.get("ledger"),
    ) {
        crate::perf::compare(&mg, &dir, ledger_app.addr, pair, &mut t).await;
    }

    // === Logs and audit ===
    t.section("7. Logs and the audit trail");
    for s in sidecars.iter_mut() {
        s.child.stop(Duration::from_secs(5));
    }
    for s in &sidecars {
        t.note(&format!(
            "access log  {:<9} {}",
            s.workload.name,
            s.access_log.display()
        ));
    }
    if features.decision_logs {
        for s in &sidecars {
            if let Some(path) = &s.decision_log {
                let lines = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
                t.note(&format!("decision log {:<9} {} ({lines} decisions: denies, dry-runs, audits, break-glass)", s.workload.name, path.display()));
            }
        }
    } else {
        t.missing("a decision log written by the sidecars (no `[decision_log]` setting in this proxy build): denies, dry-runs and reasons are in the access logs above");
    }
    t.note(&format!("CA audit    {}", ca.audit_log().display()));
    let (intact, text) = ca.audit_verify(&mg)?;
    t.note(&format!("meshguard ca audit verify: {text}"));
    if !intact {
        t.fail("the CA audit trail does not verify");
    }
    ca.stop();

    print!("{}", t.summary());
    let verdict = if !t.failures().is_empty() {
        Verdict::Unexpected
    } else if !t.missing_pieces().is_empty() {
        Verdict::Incomplete
    } else {
        Verdict::AsScripted
    };
    println!(
        "\nRESULT: {}",
        match verdict {
            Verdict::AsScripted => "every step behaved as scripted".to_owned(),
            Verdict::Incomplete => format!(
                "every step that ran behaved as scripted, but {} piece(s) of meshguard are missing (exit 2)",
                t.missing_pieces().len()
            ),
            Verdict::Unexpected => format!(
                "{} step(s) did NOT behave as scripted (exit 1)",
                t.failures().len()
            ),
        }
    );
    drop(sidecars);
    Ok(verdict)
}

/// Break-glass on a running sidecar: denied, an operator grants a 15-minute exception with its
/// reason through the sidecar's admin control socket (`meshguard policy break-glass
/// --admin-socket`), allowed with the reason in the log; the socket's audit log names the operator.
async fn break_glass_live(mg: &Meshguard, mesh: &Mesh<'_>, l7: bool, t: &mut Transcript) {
    // Per request, reporting may not post ledger entries; per connection, it may not reach keys.
    let (target, method, path) = if l7 {
        ("ledger", "POST", "/ledger/entries")
    } else {
        ("keys", "POST", "/v1/keys/financial-report/decrypt")
    };
    let step = |expect, because, note| Request {
        caller: "reporting",
        target,
        method,
        path,
        headers: Vec::new(),
        expect,
        because,
        note,
    };
    script::run(
        mesh,
        &step(Expect::Deny, None, "break-glass: before the grant"),
        t,
    )
    .await;
    let reason = "INC-4711: correcting entry approved by the duty manager";
    let sidecar = mesh.sidecars[target];
    let socket = ca::path(&sidecar.admin_socket);
    let args = [
        "policy",
        "break-glass",
        "--admin-socket",
        &socket,
        "--principal",
        id_of("reporting"),
        "--for",
        "15m",
        "--reason",
        reason,
        "--issued-by",
        "demo operator",
    ];
    t.note(&format!("meshguard {}", args.join(" ")));
    let output = match mg.output(&args) {
        Ok(output) => output,
        Err(error) => {
            t.fail(&format!(
                "cannot run meshguard policy break-glass: {error:#}"
            ));
            return;
        }
    };
    t.detail(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() {
        t.detail(String::from_utf8_lossy(&output.stderr).trim());
        t.fail("the sidecar's admin control socket refused the break-glass grant");
        return;
    }
    // Who granted it, as the kernel saw them (SO_PEERCRED), and why: on record before it applied.
    let audit = std::fs::read_to_string(&sidecar.admin_audit_log).unwrap_or_default();
    match audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["path"] == "/break-glass" && l["outcome"] == "requested")
    {
        Some(line) => t.detail(&format!("admin audit: {line}")),
        None => t.fail("the admin audit log has no record of the break-glass call"),
    }
    script::run(
        mesh,
        &step(
            Expect::Allow,
            Some("INC-4711"),
            "break-glass: after the grant",
        ),
        t,
    )
    .await;
}

/// Per-connection script for an L4-only build.
fn l4_script() -> Vec<Request> {
    let r = |caller, target, method, path, expect, because, note| Request {
        caller,
        target,
        method,
        path,
        headers: Vec::new(),
        expect,
        because,
        note,
    };
    vec![
        r(
            "payments",
            "ledger",
            "POST",
            "/ledger/entries",
            Expect::Allow,
            Some("payments-connect"),
            "payments may connect to the ledger",
        ),
        r(
            "reporting",
            "ledger",
            "GET",
            "/ledger/balances",
            Expect::Allow,
            Some("dry-run"),
            "reporting may connect; a dry-run deny policy logs what it would do",
        ),
        r(
            "gateway",
            "ledger",
            "GET",
            "/ledger/balances",
            Expect::Deny,
            None,
            "a legacy client behind the gateway: nobody else reaches the ledger",
        ),
        r(
            "payments",
            "gateway",
            "GET",
            "/accounts/12345678",
            Expect::Allow,
            Some("payments-to-core-banking"),
            "core-banking is reached only through its gateway, by payments",
        ),
        r(
            "reporting",
            "gateway",
            "GET",
            "/accounts/12345678",
            Expect::Deny,
            None,
            "reporting may not reach core-banking",
        ),
        r(
            "reporting",
            "keys",
            "POST",
            "/v1/keys/financial-report/decrypt",
            Expect::Deny,
            None,
            "the key-access Rego policy needs HTTP attributes: at L4 it never allows (fail closed)",
        ),
    ]
}

/// Per-request script for a build with the L7 proxy.
fn l7_script() -> Vec<Request> {
    let in_hours = london_business_hours_now();
    let hours = if in_hours {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let r = |caller, target, method, path, expect, because, note| Request {
        caller,
        target,
        method,
        path,
        headers: Vec::new(),
        expect,
        because,
        note,
    };
    let role = |who, role, expect, because, note| {
        let mut req = r(
            who,
            "keys",
            "POST",
            "/v1/keys/financial-report/decrypt",
            expect,
            because,
            note,
        );
        req.headers.push(("x-role", role));
        req
    };
    vec![
        r(
            "payments",
            "ledger",
            "POST",
            "/ledger/entries",
            Expect::Allow,
            Some("payments-write-entries"),
            "payments may POST /ledger/entries",
        ),
        r(
            "payments",
            "ledger",
            "GET",
            "/ledger/balances",
            Expect::Deny,
            None,
            "payments may not read balances",
        ),
        r(
            "reporting",
            "ledger",
            "GET",
            "/ledger/balances",
            hours,
            None,
            if in_hours {
                "reporting may read balances in London business hours (it is now)"
            } else {
                "reporting may read balances only in London business hours (it is not now)"
            },
        ),
        r(
            "reporting",
            "ledger",
            "POST",
            "/ledger/entries",
            Expect::Deny,
            None,
            "reporting may only GET /ledger/balances",
        ),
        r(
            "payments",
            "ledger",
            "DELETE",
            "/ledger/entries/1",
            Expect::Deny,
            Some("append-only"),
            "nobody deletes ledger entries",
        ),
        r(
            "gateway",
            "ledger",
            "GET",
            "/ledger/balances",
            Expect::Deny,
            None,
            "a legacy client behind the gateway: nobody else reaches the ledger",
        ),
        role(
            "reporting",
            "accountant",
            hours,
            None,
            "key access (Rego): accounting principal, role and network, in business hours",
        ),
        role(
            "reporting",
            "intern",
            Expect::Deny,
            Some("may not decrypt"),
            "key access (Rego): wrong role",
        ),
        role(
            "payments",
            "accountant",
            Expect::Deny,
            Some("not an accounting service"),
            "key access (Rego): payments is not an accounting service",
        ),
        r(
            "payments",
            "gateway",
            "GET",
            "/accounts/12345678",
            Expect::Allow,
            Some("payments-to-core-banking"),
            "core-banking is reached only through its gateway, by payments",
        ),
        r(
            "reporting",
            "gateway",
            "GET",
            "/accounts/12345678",
            Expect::Deny,
            None,
            "reporting may not reach core-banking",
        ),
    ]
}

/// Whether the proxies' real clock is in the ledger policy's window (Mon-Fri 09:00-17:00 London).
fn london_business_hours_now() -> bool {
    let zone = jiff::tz::TimeZone::get("Europe/London").unwrap_or(jiff::tz::TimeZone::UTC);
    let now = zone.to_datetime(jiff::Timestamp::now());
    let weekday = now.weekday().to_monday_one_offset();
    weekday <= 5 && (9..17).contains(&now.hour())
}

/// Business hours both sides, the dry-run, break-glass and key access, decided by `meshguard policy`
/// at fixed times on the files the sidecars load.
fn engine_steps(mg: &Meshguard, dir: &std::path::Path, t: &mut Transcript) -> anyhow::Result<()> {
    let ledger = dir.join("ledger.toml");
    let keys = dir.join("key-access.toml");
    let reporting = id_of("reporting");
    let monday_10 = "2026-11-23T10:00:00Z";
    let monday_18 = "2026-11-23T18:30:00Z";
    let balances = |time: &str| json!({"principal": reporting, "source_ip": "127.0.0.1", "method": "GET", "host": "ledger", "path": "/ledger/balances", "headers": {}, "time": time});
    let d = checks::eval(
        mg,
        dir,
        &ledger,
        None,
        &balances(monday_10),
        "balances-monday-10",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "ledger",
        "GET /ledger/balances Mon 10:00 London",
        "allow",
        &d,
        Some("reporting-read-in-hours"),
    );
    t.note("   (the dry-run policy `balances-need-ticket` matched too: logged, not enforced)");
    let d = checks::eval(
        mg,
        dir,
        &ledger,
        None,
        &balances(monday_18),
        "balances-monday-1830",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "ledger",
        "GET /ledger/balances Mon 18:30 London",
        "deny",
        &d,
        None,
    );

    // Break-glass: an incident lets reporting post a correcting entry for 15 minutes.
    let grants = dir.join("break-glass.toml");
    let post = |time: jiff::Timestamp| json!({"principal": reporting, "source_ip": "127.0.0.1", "method": "POST", "host": "ledger", "path": "/ledger/entries", "headers": {}, "time": time.to_string()});
    let d = checks::eval(
        mg,
        dir,
        &ledger,
        None,
        &post(jiff::Timestamp::now()),
        "reporting-post-before-grant",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "ledger",
        "POST /ledger/entries (no grant)",
        "deny",
        &d,
        None,
    );
    let reason = "INC-4711: correcting entry approved by the duty manager";
    let out = mg.run(&[
        "policy",
        "break-glass",
        "--principal",
        reporting,
        "--for",
        "15m",
        "--reason",
        reason,
        "--file",
        &ca::path(&grants),
    ])?;
    for line in out.lines() {
        t.detail(line);
    }
    // Decided 2 s after the grant was written (grant times are whole seconds).
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(2))?;
    let d = checks::eval(
        mg,
        dir,
        &ledger,
        Some(&grants),
        &post(later),
        "reporting-post-with-grant",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "ledger",
        "POST /ledger/entries (break-glass)",
        "allow",
        &d,
        Some("INC-4711"),
    );

    let decrypt = |who: &str, role: &str, time: &str| json!({"principal": who, "source_ip": "127.0.0.1", "method": "POST", "host": "keys", "path": "/v1/keys/financial-report/decrypt", "headers": {"x-role": role}, "time": time});
    let d = checks::eval(
        mg,
        dir,
        &keys,
        None,
        &decrypt(reporting, "accountant", monday_10),
        "decrypt-monday-10",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "keys",
        "decrypt financial-report Mon 10:00",
        "allow",
        &d,
        Some("financial-report-key-decrypt"),
    );
    let d = checks::eval(
        mg,
        dir,
        &keys,
        None,
        &decrypt(reporting, "accountant", "2026-11-28T10:00:00Z"),
        "decrypt-saturday",
    )?;
    checks::engine_step(
        t,
        "reporting",
        "keys",
        "decrypt financial-report Sat 10:00",
        "deny",
        &d,
        Some("outside business hours"),
    );
    let d = checks::eval(
        mg,
        dir,
        &keys,
        None,
        &decrypt(id_of("payments"), "intern", monday_10),
        "decrypt-payments-intern",
    )?;
    checks::engine_step(
        t,
        "payments",
        "keys",
        "decrypt as intern Mon 10:00",
        "deny",
        &d,
        Some("not an accounting service"),
    );
    Ok(())
}

/// Waits (bounded) until the CA's trail shows a renewal for every sidecar.
async fn wait_for_renewals(ca: &ca::Ca, sidecars: &[Sidecar], t: &mut Transcript) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let events = ca.audit_events();
        let pending: Vec<&str> = sidecars
            .iter()
            .filter(|s| {
                !events
                    .iter()
                    .any(|(e, o, id)| e == "renew" && o == "issued" && id == s.workload.id)
            })
            .map(|s| s.workload.name)
            .collect();
        if pending.is_empty() {
            let renewals = events
                .iter()
                .filter(|(e, o, _)| e == "renew" && o == "issued")
                .count();
            t.note(&format!("every sidecar renewed its SVID over mTLS ({renewals} renewals in the CA audit trail)"));
            for s in sidecars {
                let count = events
                    .iter()
                    .filter(|(e, o, id)| e == "renew" && o == "issued" && id == s.workload.id)
                    .count();
                t.detail(&format!(
                    "{:<9} {} renewal(s) as {}",
                    s.workload.name, count, s.workload.id
                ));
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            t.fail(&format!(
                "no renewal recorded within the wait for: {}",
                pending.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
