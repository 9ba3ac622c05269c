//! Break-glass: a time-boxed emergency allow for one principal, with a mandatory reason. A grant
//! turns a deny for that principal into an allow until it expires by itself, and every decision it
//! grants carries its reason (`Decision::break_glass`) so the log shows each use.
//!
//! Grants live in a TOML file the policy store loads with the policies:
//! ```toml
//! [[grant]]
//! principal = "spiffe://bank.example/ns/payments/sa/payments"
//! reason = "INC-4711: ledger migration, approved by on-call lead"
//! not_before = "2026-11-23T10:00:00Z"
//! expires = "2026-11-23T10:15:00Z"
//! ```

use std::path::Path;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::pattern::check_spiffe_id;
use crate::{Location, PolicyError};

/// The longest grant accepted: break-glass is for emergencies, not a standing exception.
pub const MAX_GRANT: SignedDuration = SignedDuration::from_hours(24);

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub principal: String,
    pub reason: String,
    pub not_before: Timestamp,
    pub expires: Timestamp,
    /// Who asked for it, when known (the operator's name or ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
}

impl Grant {
    /// A grant for `principal` from `now` for `duration`, refused when the principal is not an exact
    /// SPIFFE ID, the reason is empty, or the duration is not in (0, 24 h].
    pub fn new(
        principal: &str,
        duration: SignedDuration,
        reason: &str,
        now: Timestamp,
    ) -> Result<Self, PolicyError> {
        let grant = Self {
            principal: principal.to_owned(),
            reason: reason.trim().to_owned(),
            not_before: now,
            expires: now
                .checked_add(duration)
                .map_err(|e| PolicyError::BreakGlass {
                    message: format!("the duration does not fit in time: {e}"),
                })?,
            issued_by: None,
        };
        grant
            .check()
            .map_err(|message| PolicyError::BreakGlass { message })?;
        Ok(grant)
    }

    fn check(&self) -> Result<(), String> {
        check_spiffe_id(&self.principal)
            .map_err(|e| format!("{e}; a grant names one exact principal, never a pattern"))?;
        if self.reason.trim().is_empty() {
            return Err("a reason is mandatory; say why the emergency access is needed".into());
        }
        let length = self.not_before.duration_until(self.expires);
        if length <= SignedDuration::ZERO || length > MAX_GRANT {
            return Err(format!(
                "a grant must last more than zero and at most {MAX_GRANT:#}; this one lasts {length:#}"
            ));
        }
        Ok(())
    }

    /// Whether the grant is in force at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.expires
    }

    /// The grant as a `[[grant]]` TOML table, for appending to a grants file.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct One<'a> {
            grant: [&'a Grant; 1],
        }
        toml::to_string(&One { grant: [self] }).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    grant: Vec<toml::Spanned<Grant>>,
}

/// The loaded grants, with reasons prepared for decisions.
#[derive(Debug, Clone, Default)]
pub struct BreakGlass {
    grants: Vec<(Grant, Arc<str>)>,
}

impl BreakGlass {
    /// Parses a grants file; each grant is checked as [`Grant::new`] checks it.
    pub fn parse(file: &Path, text: &str) -> Result<Self, PolicyError> {
        let parsed: GrantsFile =
            toml::from_str(text).map_err(|e| PolicyError::from_toml(file, text, &e))?;
        let mut grants = Vec::with_capacity(parsed.grant.len());
        for spanned in parsed.grant {
            let at = Location::at_offset(file, text, spanned.span().start);
            let grant = spanned.into_inner();
            grant.check().map_err(|m| PolicyError::invalid(at, m))?;
            let reason: Arc<str> = Arc::from(format!("break-glass: {}", grant.reason));
            grants.push((grant, reason));
        }
        Ok(Self { grants })
    }

    pub fn from_grants(grants: impl IntoIterator<Item = Grant>) -> Self {
        let grants = grants
            .into_iter()
            .map(|g| {
                let reason = Arc::from(format!("break-glass: {}", g.reason));
                (g, reason)
            })
            .collect();
        Self { grants }
    }

    /// The reason of a grant in force for `principal` at `now`.
    #[inline]
    pub fn active(&self, principal: &str, now: Timestamp) -> Option<&Arc<str>> {
        if self.grants.is_empty() {
            return None;
        }
        self.grants
            .iter()
            .filter(|(g, _)| g.principal == principal && g.is_active(now))
            .max_by_key(|(g, _)| g.expires)
            .map(|(_, reason)| reason)
    }

    /// Every grant, active or not.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.iter().map(|(g, _)| g)
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://bank.example/ns/payments/sa/payments";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn grant_expires_by_itself() {
        let now = t("2026-11-23T10:00:00Z");
        let g = Grant::new(ID, SignedDuration::from_mins(15), "INC-1: fix", now).unwrap();
        let bg = BreakGlass::parse(Path::new("g.toml"), &g.to_toml()).unwrap();
        assert!(bg.active(ID, now).is_some());
        assert!(bg.active(ID, t("2026-11-23T10:14:59Z")).is_some());
        assert!(bg.active(ID, t("2026-11-23T10:15:00Z")).is_none());
        assert!(bg.active(ID, t("2026-11-23T09:59:59Z")).is_none());
        assert!(bg.active("spiffe://bank.example/other", now).is_none());
        assert_eq!(&**bg.active(ID, now).unwrap(), "break-glass: INC-1: fix");
    }

    #[test]
    fn grants_are_checked() {
        let now = t("2026-11-23T10:00:00Z");
        let m = SignedDuration::from_mins(15);
        assert!(Grant::new(ID, m, "  ", now).is_err());
        assert!(Grant::new("spiffe://bank.example/*", m, "x", now).is_err());
        assert!(Grant::new(ID, SignedDuration::from_hours(25), "x", now).is_err());
        assert!(Grant::new(ID, SignedDuration::ZERO, "x", now).is_err());
        let text = "[[grant]]\nprincipal = \"spiffe://b/x\"\nreason = \"\"\nnot_before = \"2026-11-23T10:00:00Z\"\nexpires = \"2026-11-23T10:15:00Z\"\n";
        let e = BreakGlass::parse(Path::new("g.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("g.toml:1:") && e.contains("reason"), "{e}");
    }
}
