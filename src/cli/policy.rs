//! `meshguard policy`: argument parsing and printing over `meshguard_policy`, where the logic lives.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use meshguard_policy::replay::Report;
use meshguard_policy::{
    Action, BreakGlass, Decision, Grant, Policy, PolicyError, PolicySet, RequestDoc, Sources,
    Verdict, cases, replay,
};
use serde_json::json;

const INPUT_HELP: &str = "\
Request documents (--input, cases' `input`) are JSON, the same document Rego sees as `input`:
  {\"principal\": \"spiffe://bank.example/ns/reporting/sa/reports\", \"source_ip\": \"10.0.0.5\",
   \"port\": 8080, \"sni\": \"ledger\", \"method\": \"GET\", \"host\": \"ledger\",
   \"path\": \"/ledger/balances\", \"headers\": {\"x-role\": \"auditor\"},
   \"time\": \"2026-11-23T10:00:00Z\"}
Absent fields mean a connection-level (L4) request (no `method`), no client identity (no
`principal`) or unknown. `time` is the proxy's clock; `eval` uses the current time when absent.

--format json prints {\"outcome\": \"allow\"|\"deny\", \"policy\": NAME|null, \"reasons\": [...],
\"dry_run\": [{\"policy\": NAME, \"outcome\": ...}], \"audit\", \"break_glass\", \"revision\"}.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = INPUT_HELP)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Validate policy files (and the Rego modules they name); exit non-zero with file:line:column.
    Check(Load),
    /// Decide one request and explain, policy by policy, what matched and which field did not.
    Eval {
        #[command(flatten)]
        load: Load,
        /// The request document (JSON; see `meshguard policy --help`).
        #[arg(long, value_name = "REQUEST.json")]
        input: PathBuf,
    },
    /// Run a table of cases with expected outcomes, policies and reasons (like `opa test`).
    ///
    /// CASES.toml holds `[[case]]` tables: `name`, `input` (the request document, with `time`),
    /// `expect` ("allow" | "deny"), optional `policy` (the deciding policy, "" for the default),
    /// `reasons` (each must occur in some reason) and `break_glass` (true | false).
    Test {
        #[command(flatten)]
        load: Load,
        /// The table of cases: `[[case]]` entries with an `input` and the expected outcome.
        #[arg(long, value_name = "CASES.toml")]
        cases: PathBuf,
    },
    /// Re-decide logged requests under these policies and list each whose outcome would change.
    ///
    /// ACCESS.log holds one JSON object per line, such as the proxy's own access log. Fields read
    /// (first name found wins; at the top level or under `http`): `principal` | `peer_id`,
    /// `source_ip` | `source_addr` | `source` (address or addr:port), `port` | `dst_port` | the
    /// port of `original_dst`, `sni`, `method`, `host` | `authority`, `path`, `headers` (object),
    /// `time` | `start_time` (RFC 3339), and the logged outcome `decision` | `outcome`
    /// ("allow"/"allowed"/"audit"/"deny"/"denied", or an object with an `outcome` field; "audit"
    /// was forwarded, so it counts as allowed). Other fields are ignored.
    Replay {
        #[command(flatten)]
        load: Load,
        /// A meshguard JSON access log, one request per line; each is decided again.
        #[arg(long, value_name = "ACCESS.log")]
        log: PathBuf,
    },
    /// Grant a principal a time-boxed emergency allow, appended to a grants file.
    ///
    /// The grant turns denies for that one principal into allows until it expires, and every
    /// decision it grants carries the reason. A proxy loads the grants file with its policies
    /// (`--break-glass` here) and picks up the new grant on its next reload. Granting through a
    /// running proxy: `--admin-socket /run/meshguard/admin.sock` (the proxy applies it at once).
    BreakGlass(BreakGlassArgs),
}

#[derive(Debug, clap::Args)]
struct Load {
    /// Policy files (TOML).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A break-glass grants file to load with the policies.
    #[arg(long, value_name = "GRANTS.toml")]
    break_glass: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct BreakGlassArgs {
    /// The exact SPIFFE ID to grant (no patterns).
    #[arg(long)]
    principal: String,
    /// How long, e.g. 15m, 1h, 90s (at most 24h).
    #[arg(long = "for", value_name = "DURATION")]
    duration: String,
    /// Why: the incident or ticket and who approved it. Mandatory.
    #[arg(long)]
    reason: String,
    /// The grants file to append to (created if missing).
    #[arg(
        long,
        value_name = "GRANTS.toml",
        required_unless_present = "admin_socket",
        conflicts_with = "admin_socket"
    )]
    file: Option<PathBuf>,
    /// A running proxy's admin control socket (its `[admin.control] socket`): the proxy checks
    /// this user's uid, records the call in its admin audit log, writes its `[break_glass]` file
    /// and applies the grant at once.
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Who asked for the grant (recorded in the file).
    #[arg(long)]
    issued_by: Option<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check(load) => check(&load),
        Command::Eval { load, input } => eval(&load, &input),
        Command::Test { load, cases } => test(&load, &cases),
        Command::Replay { load, log } => replay_log(&load, &log),
        Command::BreakGlass(grant) => break_glass(&grant),
    }
}

/// Loads and compiles; a policy error is printed as `file:line:column: message` and becomes exit 1.
fn load(load: &Load) -> Result<PolicySet, ExitCode> {
    Sources::read(&load.files, load.break_glass.as_deref())
        .and_then(|sources| PolicySet::compile(&sources))
        .map_err(|error| {
            eprintln!("{error}");
            ExitCode::FAILURE
        })
}

fn check(args: &Load) -> anyhow::Result<ExitCode> {
    let set = match load(args) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    if args.format == Format::Json {
        let out = json!({
            "ok": true,
            "policies": set.policies().len(),
            "default": set.default_mode().as_str(),
            "revision": &**set.revision(),
        });
        outln!("{out}")?;
    } else {
        outln!(
            "ok: {} policies in {} file(s), default {}, revision {}",
            set.policies().len(),
            args.files.len(),
            set.default_mode().as_str(),
            set.revision()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(args: &Load, input: &Path) -> anyhow::Result<ExitCode> {
    let set = match load(args) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read the request document {}", input.display()))?;
    let doc = RequestDoc::from_json(&text).with_context(|| format!("in {}", input.display()))?;
    let req = doc.as_request(Timestamp::now());
    let decision = set.evaluate(&req);
    let explained = set.explain(&req);
    if args.format == Format::Json {
        let mut out = decision.to_json();
        out["explain"] = explained
            .iter()
            .map(|(p, v)| json!({"policy": &**p.name(), "result": verdict_text(v, p, req.is_connection_level())}))
            .collect();
        outln!("{out}")?;
        return Ok(ExitCode::SUCCESS);
    }
    print_decision(&decision)?;
    outln!(
        "explanation ({}):",
        if req.is_connection_level() {
            "connection-level request"
        } else {
            "HTTP request"
        }
    )?;
    for (policy, verdict) in &explained {
        let enforce = if policy.enforce() { "" } else { ", dry-run" };
        outln!(
            "  {} ({}{enforce}): {}",
            policy.name(),
            policy.action().as_str(),
            verdict_text(verdict, policy, req.is_connection_level())
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_decision(d: &Decision) -> std::io::Result<()> {
    outln!("decision: {}", d.outcome)?;
    outln!(
        "policy:   {}",
        d.policy.as_deref().unwrap_or("(none: the default decided)")
    )?;
    for reason in &d.reasons {
        outln!("reason:   {reason}")?;
    }
    if let Some(grant) = &d.break_glass {
        outln!("granted by {grant}")?;
    }
    for dry in &d.dry_run {
        outln!("dry-run:  {} would {}", dry.policy, dry.outcome)?;
    }
    for audit in &d.audit {
        outln!("audit:    {audit} matched")?;
    }
    outln!("revision: {}", d.revision)
}

fn verdict_text(verdict: &Verdict, policy: &Policy, connection_level: bool) -> String {
    match verdict {
        Verdict::Matched(_) => "matched".into(),
        // Only HTTP fields are absent because the request is connection-level; an address or a
        // port is simply not in this request document.
        Verdict::Missed(miss) if miss.unknown => match miss.field {
            "source_cidrs" => "no match: `source_cidrs` needs the source address (`source_ip`), \
                               which this request does not carry"
                .into(),
            "ports" => "no match: `ports` needs the destination port (`port`), which this \
                        request does not carry"
                .into(),
            field if connection_level => format!("no match: `{field}` needs an HTTP request"),
            field => format!("no match: `{field}` unknown for this request"),
        },
        Verdict::Missed(miss) => format!("no match: `{}` did not match", miss.field),
        Verdict::RegoMissed(reasons) if reasons.is_empty() && policy.action() == Action::Deny => {
            "no match: the Rego module permits this request (no `deny_reason`, `allow` not false)"
                .into()
        }
        Verdict::RegoMissed(reasons) if reasons.is_empty() => {
            "no match: Rego `allow` is not true".into()
        }
        Verdict::RegoMissed(reasons) => {
            let list: Vec<&str> = reasons.iter().map(|r| &**r).collect();
            format!("no match: Rego says {}", list.join("; "))
        }
        Verdict::RegoError(error) => format!("error (fails closed): {error}"),
    }
}

fn test(args: &Load, cases_file: &Path) -> anyhow::Result<ExitCode> {
    let set = match load(args) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let text = std::fs::read_to_string(cases_file)
        .with_context(|| format!("cannot read the cases file {}", cases_file.display()))?;
    let cases = match cases::parse(cases_file, &text) {
        Ok(cases) => cases,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let results = cases::run(&set, &cases);
    let failed = results.iter().filter(|r| !r.passed()).count();
    if args.format == Format::Json {
        let out = json!({
            "passed": results.len() - failed,
            "failed": failed,
            "cases": results.iter().map(|r| json!({
                "name": r.name, "at": r.at.to_string(), "passed": r.passed(),
                "failures": r.failures, "decision": r.decision.to_json(),
            })).collect::<Vec<_>>(),
        });
        outln!("{out}")?;
    } else {
        for r in &results {
            if r.passed() {
                outln!("PASS {}", r.name)?;
            } else {
                outln!("FAIL {} ({}): {}", r.name, r.at, r.failures.join("; "))?;
                if !r.decision.reasons.is_empty() {
                    let reasons: Vec<&str> = r.decision.reasons.iter().map(|x| &**x).collect();
                    outln!("     reasons: {}", reasons.join("; "))?;
                }
            }
        }
        outln!("{} passed, {failed} failed", results.len() - failed)?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn replay_log(args: &Load, log: &Path) -> anyhow::Result<ExitCode> {
    let set = match load(args) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("cannot read the access log {}", log.display()))?;
    let report = replay::replay(&set, &text);
    if args.format == Format::Json {
        outln!("{}", replay_json(&report))?;
        return Ok(ExitCode::SUCCESS);
    }
    for change in &report.changed {
        let r = &change.request;
        let d = &change.now;
        let what = match (&r.method, &r.path) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            _ => format!(
                "connection to port {}",
                r.port.map_or("?".into(), |p| p.to_string())
            ),
        };
        let reasons: Vec<&str> = d.reasons.iter().map(|x| &**x).collect();
        outln!(
            "line {}: {} -> {}  {what} from {} ({}{})",
            change.line,
            change.was,
            d.outcome,
            r.principal.as_deref().unwrap_or("(unauthenticated)"),
            d.policy
                .as_deref()
                .map_or("default".into(), |p| format!("policy {p}")),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            },
        )?;
    }
    for (line, why) in &report.skipped {
        eprintln!("{}:{line}: skipped: {why}", log.display());
    }
    let newly_denied = report
        .changed
        .iter()
        .filter(|c| c.now.outcome == meshguard_policy::Outcome::Deny)
        .count();
    outln!(
        "{} of {} replayed requests would change ({newly_denied} newly denied, {} newly allowed); {} without a logged outcome, {} lines skipped",
        report.changed.len(),
        report.replayed,
        report.changed.len() - newly_denied,
        report.no_outcome,
        report.skipped.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn replay_json(report: &Report) -> serde_json::Value {
    json!({
        "lines": report.lines,
        "replayed": report.replayed,
        "no_outcome": report.no_outcome,
        "changed": report.changed.iter().map(|c| json!({
            "line": c.line, "request": c.request, "was": c.was, "now": c.now.to_json(),
        })).collect::<Vec<_>>(),
        "skipped": report.skipped.iter().map(|(line, why)| json!({"line": line, "error": why})).collect::<Vec<_>>(),
    })
}

fn break_glass(args: &BreakGlassArgs) -> anyhow::Result<ExitCode> {
    let Some(file) = &args.file else {
        return break_glass_via_admin(args);
    };
    let duration: SignedDuration = args.duration.parse().with_context(|| {
        format!(
            "--for {:?} is not a duration; write e.g. 15m, 1h or 90s",
            args.duration
        )
    })?;
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    // Refuse to append to a file the proxy could not load.
    if let Err(error) = BreakGlass::parse(file, &existing) {
        eprintln!("{error}");
        eprintln!("the grants file is not valid; fix it before adding a grant");
        return Ok(ExitCode::FAILURE);
    }
    // Whole seconds (rounded down, so the grant is in force at once): people read the file too.
    let now = Timestamp::now();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut grant = match Grant::new(&args.principal, duration, &args.reason, now) {
        Ok(grant) => grant,
        Err(error @ PolicyError::BreakGlass { .. }) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
        Err(error) => return Err(error.into()),
    };
    grant.issued_by.clone_from(&args.issued_by);
    let mut text = existing;
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
    }
    text.push_str(&grant.to_toml());
    // Write whole and rename, so a proxy reloading mid-write never reads half a grant.
    let tmp = file.with_extension("toml.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    outln!(
        "break-glass granted to {} until {} ({}); written to {}",
        grant.principal,
        grant.expires,
        grant.reason,
        file.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `--admin-socket PATH`: ask the running proxy to add the grant.
fn break_glass_via_admin(args: &BreakGlassArgs) -> anyhow::Result<ExitCode> {
    let Some(socket) = &args.admin_socket else {
        anyhow::bail!("give --file GRANTS.toml or --admin-socket PATH");
    };
    let admin = socket.display();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let posted = runtime.block_on(meshguard_proxy::break_glass::post_grant(
        socket,
        &args.principal,
        &args.duration,
        &args.reason,
        args.issued_by.as_deref(),
    ));
    match posted {
        Ok(grant) => {
            outln!(
                "break-glass granted to {} until {} ({}); applied by the proxy at {admin}",
                grant["principal"].as_str().unwrap_or_default(),
                grant["expires"].as_str().unwrap_or_default(),
                grant["reason"].as_str().unwrap_or_default(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("{why}");
            Ok(ExitCode::FAILURE)
        }
    }
}
