//! The identities an outbound connection is willing to talk to.
//!
//! A valid SVID proves who the peer is; it does not prove it is the peer we meant to reach. An
//! outbound connection therefore names the IDs it expects, exactly or as a trust domain plus a path
//! prefix, and a mismatch fails the handshake with both the expected and the presented ID.

use std::fmt;

use crate::error::IdentityError;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// One or more acceptable peer identities; a peer matching any of them is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedIdentities {
    rules: Vec<Expected>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Exact(SpiffeId),
    /// Any ID in `trust_domain` whose path is `path_prefix` or lies below it (segment-wise).
    Under {
        trust_domain: TrustDomain,
        path_prefix: String,
    },
}

// === impl ExpectedIdentities ===

impl ExpectedIdentities {
    /// Accepts exactly these IDs.
    pub fn exact(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            rules: ids.into_iter().map(Expected::Exact).collect(),
        }
    }

    /// Accepts any ID of `trust_domain` whose path equals `path_prefix` or continues it with `/`:
    /// `/ns/payments` accepts `/ns/payments` and `/ns/payments/sa/api`, not `/ns/payments-old`.
    /// An empty prefix (or `/`) accepts the whole trust domain.
    pub fn under(trust_domain: TrustDomain, path_prefix: &str) -> Self {
        Self {
            rules: vec![Expected::Under {
                trust_domain,
                path_prefix: path_prefix.trim_end_matches('/').to_owned(),
            }],
        }
    }

    /// Parses a list as written in config files: full SPIFFE IDs match exactly; an entry ending in
    /// `/*` (e.g. `spiffe://bank.example/ns/payments/*`) matches that trust domain and path prefix.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, IdentityError> {
        let mut rules = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref();
            if let Some(prefix) = entry.strip_suffix("/*") {
                let id = SpiffeId::parse(prefix)?;
                rules.push(Expected::Under {
                    trust_domain: id.trust_domain(),
                    path_prefix: id.path().to_owned(),
                });
            } else {
                rules.push(Expected::Exact(SpiffeId::parse(entry)?));
            }
        }
        Ok(Self { rules })
    }

    /// Accepts what `self` or `other` accepts.
    pub fn or(mut self, other: Self) -> Self {
        self.rules.extend(other.rules);
        self
    }

    pub fn matches(&self, presented: &SpiffeId) -> bool {
        self.rules.iter().any(|rule| rule.matches(presented))
    }

    /// `Ok` if `presented` is expected; otherwise an error naming the expected and presented IDs.
    pub fn check(&self, presented: &SpiffeId) -> Result<(), IdentityError> {
        if self.matches(presented) {
            return Ok(());
        }
        Err(IdentityError::UnexpectedPeer {
            expected: self.to_string(),
            presented: presented.clone(),
        })
    }
}

impl fmt::Display for ExpectedIdentities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("no identity at all (empty expect list)");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            match rule {
                Expected::Exact(id) => write!(f, "{id}")?,
                Expected::Under {
                    trust_domain,
                    path_prefix,
                } => write!(f, "spiffe://{trust_domain}{path_prefix}/*")?,
            }
        }
        Ok(())
    }
}

// === impl Expected ===

impl Expected {
    fn matches(&self, presented: &SpiffeId) -> bool {
        match self {
            Self::Exact(id) => id == presented,
            Self::Under {
                trust_domain,
                path_prefix,
            } => {
                if presented.trust_domain_str() != trust_domain.as_str() {
                    return false;
                }
                match presented.path().strip_prefix(path_prefix.as_str()) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn exact_matches_only_that_id() {
        let e = ExpectedIdentities::exact([id("spiffe://bank.example/ns/ledger/sa/ledger")]);
        assert!(e.matches(&id("spiffe://bank.example/ns/ledger/sa/ledger")));
        assert!(!e.matches(&id("spiffe://bank.example/ns/ledger/sa/ledger2")));
        assert!(!e.matches(&id("spiffe://other.example/ns/ledger/sa/ledger")));
    }

    #[test]
    fn prefix_is_segment_wise_and_domain_bound() {
        let e = ExpectedIdentities::under(TrustDomain::parse("bank.example").unwrap(), "/ns/pay");
        assert!(e.matches(&id("spiffe://bank.example/ns/pay")));
        assert!(e.matches(&id("spiffe://bank.example/ns/pay/sa/api")));
        assert!(!e.matches(&id("spiffe://bank.example/ns/payroll")));
        assert!(!e.matches(&id("spiffe://evil.example/ns/pay/sa/api")));
    }

    #[test]
    fn whole_trust_domain() {
        let e = ExpectedIdentities::parse(&["spiffe://bank.example/*"]).unwrap();
        assert!(e.matches(&id("spiffe://bank.example/anything/at/all")));
        assert!(e.matches(&id("spiffe://bank.example")));
        assert!(!e.matches(&id("spiffe://bank.example.evil/x")));
    }

    #[test]
    fn mismatch_names_expected_and_presented() {
        let e = ExpectedIdentities::parse(&[
            "spiffe://bank.example/ns/ledger/sa/ledger",
            "spiffe://bank.example/ns/audit/*",
        ])
        .unwrap();
        let err = e
            .check(&id("spiffe://bank.example/ns/web/sa/web"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("spiffe://bank.example/ns/web/sa/web"),
            "{text}"
        );
        assert!(
            text.contains(
                "spiffe://bank.example/ns/ledger/sa/ledger or spiffe://bank.example/ns/audit/*"
            ),
            "{text}"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(ExpectedIdentities::parse(&["http://bank.example/x"]).is_err());
        assert!(ExpectedIdentities::parse(&["spiffe://Bank.example/*"]).is_err());
    }
}
