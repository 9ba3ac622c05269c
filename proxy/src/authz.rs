//! Connection-level authorization: asks the policy store about a connection (peer SPIFFE ID,
//! source IP, destination port, SNI, the proxy's time) and turns the decision into access-log
//! fields and metrics. No HTTP attributes are given, so the policy crate's L4 rule applies: an
//! allow that needs them does not match, a deny that needs them does (fail closed).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshguard_policy::decision_log::DecisionLog;
use meshguard_policy::store::PolicyStore;
use meshguard_policy::watch::PolicyWatcher;
use meshguard_policy::{Decision, PolicyError, Request};

use crate::access_log::{ConnectionRecord, Outcome};

/// The policy of one inbound listener, reloaded when its files change.
#[derive(Debug, Clone)]
pub struct Authorizer {
    store: Arc<PolicyStore>,
    decision_log: Option<Arc<DecisionLog>>,
}

/// What is known about a connection when it is decided.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    /// The peer's verified SPIFFE ID.
    pub principal: Option<&'a str>,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The destination port the client dialed.
    pub port: u16,
    /// The server name the client sent.
    pub sni: Option<&'a str>,
}

// === impl Authorizer ===

impl Authorizer {
    /// Loads and compiles the policy file; a broken file is an error at start (there is no last
    /// good revision to keep yet).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        Self::load_with_break_glass(path, None)
    }

    /// As [`Self::load`], also loading break-glass grants from `break_glass` (a missing file
    /// holds no grants; the watcher picks it up once written).
    pub fn load_with_break_glass(
        path: &Path,
        break_glass: Option<&Path>,
    ) -> Result<Self, PolicyError> {
        let store = PolicyStore::load(vec![PathBuf::from(path)], break_glass.map(Path::to_owned))?;
        Ok(Self {
            store: Arc::new(store),
            decision_log: None,
        })
    }

    /// Also writes denies, audits and dry-run matches to the decision log.
    pub fn with_decision_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.decision_log = Some(log);
        self
    }

    /// Watches the policy's files and reloads on change; a broken edit keeps the last good
    /// revision (the policy crate logs file, line and error). Keep the watcher alive.
    pub fn watch(&self) -> Result<PolicyWatcher, PolicyError> {
        meshguard_policy::watch::watch(self.store.clone(), |result| {
            if let Ok(reloaded) = result
                && reloaded.changed
            {
                tracing::info!(revision = %reloaded.revision, "policy revision applied to new connections");
            }
        })
    }

    /// The store (for reloads from the admin API or tests).
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// Decides a connection at the proxy's current time.
    pub fn decide(&self, facts: ConnectionFacts<'_>) -> Decision {
        let mut request = Request::connection(jiff::Timestamp::now());
        request.principal = facts.principal;
        request.source_ip = Some(facts.source_ip);
        request.port = Some(facts.port);
        request.sni = facts.sni;
        let started = std::time::Instant::now();
        let decision = self.store.evaluate(&request);
        if let Some(log) = &self.decision_log {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            log.record(&request, &decision, nanos);
        }
        decision
    }
}

impl Authorizer {
    /// Decides a request (L7 or L4) built by the caller, recording it in the decision log.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        let started = std::time::Instant::now();
        let decision = self.store.evaluate(request);
        if let Some(log) = &self.decision_log {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            log.record(request, &decision, nanos);
        }
        decision
    }
}

/// Copies a decision into the access-log record.
pub fn record_decision(record: &mut ConnectionRecord, decision: &Decision) {
    let audited = decision.default_audit || !decision.audit.is_empty();
    record.decision = Some(match (decision.is_allowed(), audited) {
        (false, _) => Outcome::Deny,
        (true, true) => Outcome::Audit,
        (true, false) => Outcome::Allow,
    });
    record.dry_run = !decision.dry_run.is_empty();
    record.policy = decision.policy.as_deref().map(str::to_owned);
    record.rule = decision
        .break_glass
        .as_ref()
        .map(|_| "break-glass".to_owned());
    let mut reasons: Vec<&str> = decision.reasons.iter().map(|r| &**r).collect();
    if let Some(grant) = decision.break_glass.as_deref() {
        reasons.push(grant);
    }
    if !reasons.is_empty() {
        record.reason = Some(reasons.join("; "));
    } else if !decision.is_allowed() {
        record.reason = Some("no allow policy matched (default deny)".to_owned());
    }
}

/// The metric label for a decision's policy (`default` when no policy decided).
pub fn policy_label(decision: &Decision) -> &str {
    decision.policy.as_deref().unwrap_or("default")
}
