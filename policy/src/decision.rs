//! The result of a decision: outcome, the policy and reasons behind it, and what dry-run and audit
//! policies would have done. Built without allocating: names and reasons are `Arc<str>` prepared
//! when the policy set was compiled, lists are inline up to a few entries.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What decided when no policy did: the file's `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultMode {
    /// Deny what no allow policy allows.
    #[default]
    Deny,
    /// Allow any authenticated peer (one with a principal) that no deny policy denies.
    AllowAuthenticated,
    /// Allow, and log every such decision: for rolling policy out.
    Audit,
}

impl DefaultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::AllowAuthenticated => "allow-authenticated",
            Self::Audit => "audit",
        }
    }
}

/// What a non-enforced (dry-run) policy that matched would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub policy: Arc<str>,
    pub outcome: Outcome,
}

/// Reasons; inline up to two.
pub type Reasons = SmallVec<[Arc<str>; 2]>;

/// One decision.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    /// The policy that decided; `None` when the default did.
    pub policy: Option<Arc<str>>,
    /// Why (for a deny: the deny policy's reason, Rego `deny_reason`s, or the default's).
    pub reasons: Reasons,
    /// Non-enforced policies that matched, with what they would have decided.
    pub dry_run: SmallVec<[DryRun; 2]>,
    /// `audit` policies that matched (they never change the outcome).
    pub audit: SmallVec<[Arc<str>; 2]>,
    /// Set when a break-glass grant turned a deny into this allow: the grant's reason.
    pub break_glass: Option<Arc<str>>,
    /// True when `default = "audit"` allowed this request.
    pub default_audit: bool,
    /// SHA-256 of the policy sources that decided.
    pub revision: Arc<str>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// Whether the decision log records this decision: denies, break-glass grants, audit matches
    /// (including `default = "audit"`) and dry-run matches.
    pub fn should_log(&self) -> bool {
        self.outcome == Outcome::Deny
            || self.break_glass.is_some()
            || self.default_audit
            || !self.audit.is_empty()
            || !self.dry_run.is_empty()
    }

    /// The `--format json` shape: `{"outcome", "policy", "reasons", "dry_run": [{"policy",
    /// "outcome"}]}` plus `audit`, `break_glass` and `revision`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "outcome": self.outcome,
            "policy": self.policy.as_deref(),
            "reasons": self.reasons.iter().map(|r| &**r).collect::<Vec<_>>(),
            "dry_run": self.dry_run.iter().map(|d| serde_json::json!({
                "policy": &*d.policy, "outcome": d.outcome,
            })).collect::<Vec<_>>(),
            "audit": self.audit.iter().map(|a| &**a).collect::<Vec<_>>(),
            "break_glass": self.break_glass.as_deref(),
            "revision": &*self.revision,
        })
    }
}
