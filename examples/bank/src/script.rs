//! The scripted requests. Each one is sent for real through the caller's sidecar; the observed
//! outcome is read from the response, the app's own record of what reached it, and the line the
//! target's inbound sidecar wrote to its access log. The script only states what it expects.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::apps::App;
use crate::client::{self, Reply};
use crate::logs::{self, LogCursor};
use crate::topology::Sidecar;
use crate::transcript::{StepResult, Transcript};

/// What a step expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The request reaches the app and the log says allow (or audit).
    Allow,
    /// The request never reaches the app and the log says deny.
    Deny,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One scripted request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Caller workload (whose sidecar's outbound listener is used).
    pub caller: &'static str,
    /// Target workload (whose inbound sidecar decides).
    pub target: &'static str,
    /// HTTP method.
    pub method: &'static str,
    /// Path.
    pub path: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Expected outcome.
    pub expect: Expect,
    /// A word that must occur in the logged policy or reason, e.g. the policy name.
    pub because: Option<&'static str>,
    /// Why the script expects this, printed with the step.
    pub note: &'static str,
}

/// The mesh as the script sees it.
#[derive(Debug)]
pub struct Mesh<'a> {
    /// Sidecars by workload name.
    pub sidecars: BTreeMap<&'static str, &'a Sidecar>,
    /// Apps by workload name (`gateway` maps to the legacy host).
    pub apps: BTreeMap<&'static str, &'a App>,
    /// `http` (per-request decisions) or `tcp` (per-connection).
    pub protocol: &'a str,
}

/// Sends one request and records what happened; returns the target's access-log line for it.
pub async fn run(mesh: &Mesh<'_>, step: &Request, t: &mut Transcript) -> Option<serde_json::Value> {
    let request_text = format!("{} {}", step.method, step.path);
    let target = mesh.sidecars[step.target];
    let app = mesh.apps[step.target];
    let caller = mesh.sidecars[step.caller];
    let Some(&via) = caller.outbound.get(step.target) else {
        t.fail(&format!(
            "{} has no outbound listener to {}",
            step.caller, step.target
        ));
        return None;
    };
    // The id matches the step's number in the transcript.
    let request_id = format!("demo-{}", t.steps().len() + 1);
    let mut headers = step.headers.clone();
    headers.push(("x-request-id", &request_id));
    let cursor = LogCursor::at_end(&target.access_log);
    let decisions = target.decision_log.as_deref().map(LogCursor::at_end);
    let before = app.hits().len();

    let reply = client::send(via, step.method, step.path, &headers, step.target).await;

    // The log line for this request: at L7 the request line carrying our request id (under
    // `http`); at L4 the inbound connection line (written when the connection closes).
    let l7 = crate::topology::protocol_for(step.target, mesh.protocol) == "http";
    let line = cursor
        .wait_for(Duration::from_secs(5), |l| {
            logs::field(l, "direction") == Some("inbound")
                && (!l7 || logs::request_id(l) == Some(&request_id))
        })
        .await;
    let reached = app.hits().len() > before;
    let logged = line.as_ref().map(logs::decision);
    let observed = match (&logged, reached) {
        (Some(d), true) if d == "allow" || d == "audit" => "allow".to_owned(),
        (Some(d), false) if d == "deny" => "deny".to_owned(),
        (Some(d), reached) => format!("{d}{}", if reached { "+reached-app" } else { "" }),
        (None, true) => "allow?".to_owned(),
        (None, false) => "no-log".to_owned(),
    };
    let why_log = line
        .as_ref()
        .map(logs::explain)
        .unwrap_or_else(|| "no access-log line within 5 s".into());
    let because_ok = step.because.is_none_or(|word| why_log.contains(word));
    let reply_ok = match (step.expect, &reply) {
        (Expect::Allow, Reply::Http { status, .. }) => (200..300).contains(status),
        (Expect::Allow, Reply::NoResponse(_)) => false,
        // L7 answers 403; L4 closes the connection after the handshake.
        (Expect::Deny, Reply::Http { status, .. }) => *status == 403,
        (Expect::Deny, Reply::NoResponse(_)) => !l7,
    };
    let passed = observed == step.expect.as_str() && because_ok && reply_ok;
    let mut why = format!("{}\n             reply: {}", why_log, reply.describe());
    if let Some(hit) = app.hits().get(before).filter(|_| reached) {
        why.push_str(&format!(
            "\n             {} app saw the caller as: {}",
            app.name,
            hit.xfcc
                .as_deref()
                .unwrap_or("(no x-forwarded-client-cert: L4 proxy passes bytes only)")
        ));
    }
    // The decision log holds denies, dry-run and audit matches and break-glass grants only, so an
    // ordinary allow has no line there: a short wait is enough.
    if let Some(decisions) = &decisions {
        let caller_id = crate::topology::id_of(step.caller);
        let wait = if observed == "deny" {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        let entry = decisions
            .wait_for(wait, |l| {
                l.get("input").and_then(|i| logs::field(i, "principal")) == Some(caller_id)
            })
            .await;
        if let Some(entry) = entry {
            why.push_str(&format!(
                "\n             decision log: {}",
                logs::explain_decision(&entry)
            ));
        }
    }
    if !step.note.is_empty() {
        why = format!("{}\n             {why}", step.note);
    }
    if !because_ok {
        why.push_str(&format!(
            "\n             expected the log to name {:?}",
            step.because.unwrap_or("")
        ));
    }
    t.step(StepResult {
        caller: step.caller.to_owned(),
        target: step.target.to_owned(),
        request: format!("{request_text}{}", if l7 { "" } else { " (L4)" }),
        expected: step.expect.as_str().to_owned(),
        observed,
        why,
        passed,
    });
    line
}

/// Continuous verification: `caller` keeps calling `target` (which denies it) until the target's
/// sidecar blocks it. Each attempt is a real request; the block must show in the log (rule
/// `lockout`) within `threshold + 1` attempts.
pub async fn lockout(
    mesh: &Mesh<'_>,
    caller: &'static str,
    target: &'static str,
    threshold: usize,
    t: &mut Transcript,
) {
    for attempt in 1..=threshold + 1 {
        let step = Request {
            caller,
            target,
            method: "GET",
            path: "/accounts/12345678",
            headers: Vec::new(),
            expect: Expect::Deny,
            because: None,
            note: if attempt == 1 {
                "lockout: the caller keeps trying after being denied"
            } else {
                ""
            },
        };
        let line = run(mesh, &step, t).await;
        let text = line.as_ref().map(logs::explain).unwrap_or_default();
        if text.contains("lockout") {
            t.note(&format!(
                "   -> {caller} is now locked out at the {target} sidecar (attempt {attempt}); the block expires by itself"
            ));
            return;
        }
    }
    t.fail(&format!(
        "{target} did not lock {caller} out after {} denied attempts",
        threshold + 1
    ));
}
