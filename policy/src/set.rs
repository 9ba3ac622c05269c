//! The compiled, immutable policy set and the decision procedure:
//! 1. any matching enforced `deny` -> deny (a Rego error anywhere on the path also denies);
//! 2. else any matching enforced `allow` -> allow;
//! 3. else the default (`deny` | `allow-authenticated` | `audit`);
//! 4. `audit` and non-enforced policies are evaluated for the record and never change the outcome;
//! 5. a break-glass grant for the principal turns a deny into an allow, marked with its reason.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::PolicyError;
use crate::break_glass::BreakGlass;
use crate::decision::{Decision, DefaultMode, DryRun, Outcome, Reasons};
use crate::policy::{Attrs, Miss, Policy};
use crate::request::Request;
use crate::sources::Sources;
use crate::spec::Action;

/// Policies of one kind, indexed by exact principal; both lists are in file order.
#[derive(Debug, Default)]
pub(crate) struct Group {
    by_principal: HashMap<Box<str>, Box<[u32]>>,
    rest: Box<[u32]>,
}

impl Group {
    pub(crate) fn new(by_principal: HashMap<Box<str>, Vec<u32>>, rest: Vec<u32>) -> Self {
        let by_principal = by_principal
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        Self {
            by_principal,
            rest: rest.into(),
        }
    }

    /// The first policy, in file order, for which `hit` is true.
    #[inline]
    fn first(&self, principal: Option<&str>, mut hit: impl FnMut(u32) -> bool) -> Option<u32> {
        let indexed: &[u32] = match principal {
            Some(p) if !self.by_principal.is_empty() => self.by_principal.get(p).map_or(&[], |v| v),
            _ => &[],
        };
        let (mut a, mut b) = (indexed.iter().peekable(), self.rest.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            if next.is_some_and(|&i| hit(i)) {
                return next.copied();
            }
        }
    }
}

/// How one policy fared against one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Matched; for a deny, with its reasons.
    Matched(Reasons),
    /// A native field did not match.
    Missed(Miss),
    /// The native fields matched but the Rego module did not (with its `deny_reason`s).
    RegoMissed(Reasons),
    /// The Rego module failed: this fails closed.
    RegoError(Arc<str>),
}

/// An immutable, compiled policy set. Share it behind an `Arc`; evaluation takes `&self`.
#[derive(Debug)]
pub struct PolicySet {
    policies: Box<[Policy]>,
    default: DefaultMode,
    deny: Group,
    allow: Group,
    observe: Box<[u32]>,
    break_glass: BreakGlass,
    revision: Arc<str>,
    default_deny: Arc<str>,
    unauthenticated: Arc<str>,
}

impl PolicySet {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        policies: Box<[Policy]>,
        default: DefaultMode,
        deny: Group,
        allow: Group,
        observe: Box<[u32]>,
        break_glass: BreakGlass,
        revision: Arc<str>,
    ) -> Self {
        Self {
            policies,
            default,
            deny,
            allow,
            observe,
            break_glass,
            revision,
            default_deny: Arc::from("no allow policy matched (default deny)"),
            unauthenticated: Arc::from(
                "the peer is not authenticated and no allow policy matched (default allow-authenticated)",
            ),
        }
    }

    /// Compiles policy sources (see [`Sources::read`] to load them from disk).
    pub fn compile(sources: &Sources) -> Result<Self, PolicyError> {
        crate::compile::compile(sources)
    }

    /// Compiles policy files held in memory (no Rego modules, no grants).
    pub fn from_texts<P: Into<std::path::PathBuf>>(
        texts: impl IntoIterator<Item = (P, String)>,
    ) -> Result<Self, PolicyError> {
        Self::compile(&Sources::from_texts(
            texts.into_iter().map(|(p, t)| (p.into(), t)),
        ))
    }

    /// The SHA-256 of the sources this set was compiled from.
    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    pub fn default_mode(&self) -> DefaultMode {
        self.default
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn break_glass(&self) -> &BreakGlass {
        &self.break_glass
    }

    /// Decides `req`. Native policies allocate nothing; a Rego policy builds its input document.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let attrs = Attrs::new(req);
        let mut reasons = Reasons::new();
        let mut failed: Option<u32> = None;
        let deny = self
            .deny
            .first(req.principal, |i| match self.verdict(i, &attrs) {
                Verdict::Matched(r) => {
                    reasons = r;
                    true
                }
                Verdict::RegoError(e) => {
                    reasons = smallvec::smallvec![e];
                    true
                }
                Verdict::Missed(_) | Verdict::RegoMissed(_) => false,
            });
        let (outcome, policy, default_audit) = if let Some(i) = deny {
            (Outcome::Deny, Some(i), false)
        } else {
            let allow = self
                .allow
                .first(req.principal, |i| match self.verdict(i, &attrs) {
                    Verdict::Matched(_) => true,
                    Verdict::RegoError(e) => {
                        reasons = smallvec::smallvec![e];
                        failed = Some(i);
                        true
                    }
                    Verdict::RegoMissed(r) => {
                        reasons.extend(r);
                        false
                    }
                    Verdict::Missed(_) => false,
                });
            match (allow, failed) {
                (Some(i), Some(_)) => (Outcome::Deny, Some(i), false),
                (Some(i), None) => {
                    reasons.clear();
                    (Outcome::Allow, Some(i), false)
                }
                (None, _) => match self.default {
                    DefaultMode::Deny => {
                        reasons.insert(0, self.default_deny.clone());
                        (Outcome::Deny, None, false)
                    }
                    DefaultMode::AllowAuthenticated if req.principal.is_none() => {
                        reasons.insert(0, self.unauthenticated.clone());
                        (Outcome::Deny, None, false)
                    }
                    DefaultMode::AllowAuthenticated => {
                        reasons.clear();
                        (Outcome::Allow, None, false)
                    }
                    DefaultMode::Audit => (Outcome::Allow, None, true),
                },
            }
        };

        let mut dry_run = SmallVec::new();
        let mut audit = SmallVec::new();
        for &i in &self.observe {
            let p = &self.policies[i as usize];
            let would = match self.verdict(i, &attrs) {
                Verdict::Matched(_) => p.action,
                Verdict::RegoError(_) => Action::Deny,
                Verdict::Missed(_) | Verdict::RegoMissed(_) => continue,
            };
            match (p.action, would) {
                (Action::Audit, _) => audit.push(p.name.clone()),
                (_, Action::Allow) => dry_run.push(DryRun {
                    policy: p.name.clone(),
                    outcome: Outcome::Allow,
                }),
                _ => dry_run.push(DryRun {
                    policy: p.name.clone(),
                    outcome: Outcome::Deny,
                }),
            }
        }

        let mut decision = Decision {
            outcome,
            policy: policy.map(|i| self.policies[i as usize].name.clone()),
            reasons,
            dry_run,
            audit,
            break_glass: None,
            default_audit,
            revision: self.revision.clone(),
        };
        let grant = match (decision.outcome, req.principal) {
            (Outcome::Deny, Some(principal)) => self.break_glass.active(principal, req.time),
            _ => None,
        };
        if let Some(reason) = grant {
            decision.outcome = Outcome::Allow;
            decision.break_glass = Some(reason.clone());
        }
        decision
    }

    /// How policy `i` fares against `req`.
    fn verdict(&self, i: u32, attrs: &Attrs<'_>) -> Verdict {
        let p = &self.policies[i as usize];
        if let Err(miss) = p.check_fields(attrs) {
            return Verdict::Missed(miss);
        }
        let Some(rego) = &p.rego else {
            let mut reasons = Reasons::new();
            if p.action == Action::Deny {
                reasons.push(p.reason.clone());
            }
            return Verdict::Matched(reasons);
        };
        match rego.evaluate(&attrs.req, p.action != Action::Deny) {
            Err(e) => Verdict::RegoError(Arc::from(format!(
                "Rego policy {} failed, so the request is denied: {e}",
                p.name
            ))),
            Ok(result) => {
                let permits = result.allow && result.deny_reasons.is_empty();
                match (p.action, permits) {
                    (Action::Deny, false) => {
                        let mut reasons = result.deny_reasons;
                        if reasons.is_empty() {
                            reasons.push(p.reason.clone());
                        }
                        Verdict::Matched(reasons)
                    }
                    (Action::Deny, true) => Verdict::RegoMissed(Reasons::new()),
                    (_, true) => Verdict::Matched(Reasons::new()),
                    (_, false) => Verdict::RegoMissed(result.deny_reasons),
                }
            }
        }
    }

    /// For each policy in file order, how it fared (for `meshguard policy eval`).
    pub fn explain(&self, req: &Request<'_>) -> Vec<(&Policy, Verdict)> {
        let attrs = Attrs::new(req);
        (0..self.policies.len())
            .map(|i| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                (&self.policies[i as usize], self.verdict(i, &attrs))
            })
            .collect()
    }
}
