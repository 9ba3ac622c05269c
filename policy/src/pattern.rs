//! String patterns shared by all list fields: exact, `"prefix*"`, `"*suffix"` and `"*"`, plus the
//! SPIFFE-ID shape rules principals are checked against. Matching never allocates.

use std::fmt;

/// One compiled pattern. A `*` may appear only alone, at the start or at the end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl Pattern {
    /// Parses `"*"`, `"prefix*"`, `"*suffix"` or an exact string.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing; remove it or write \"*\"".into());
        }
        if text == "*" {
            return Ok(Self::Any);
        }
        let (pattern, inner) = if let Some(rest) = text.strip_suffix('*') {
            (Self::Prefix(rest.into()), rest)
        } else if let Some(rest) = text.strip_prefix('*') {
            (Self::Suffix(rest.into()), rest)
        } else {
            (Self::Exact(text.into()), text)
        };
        if inner.contains('*') {
            return Err(format!(
                "pattern {text:?} has a `*` in the middle or at both ends; a `*` may only stand \
                 alone, start a pattern (\"*suffix\") or end it (\"prefix*\")"
            ));
        }
        Ok(pattern)
    }

    /// Case-sensitive match.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => value == &**p,
            Self::Prefix(p) => value.starts_with(&**p),
            Self::Suffix(p) => value.ends_with(&**p),
        }
    }

    /// ASCII case-insensitive match (host names, header values).
    #[inline]
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            Self::Any => true,
            Self::Exact(p) => v.eq_ignore_ascii_case(p.as_bytes()),
            Self::Prefix(p) => v
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes())),
            Self::Suffix(p) => v
                .len()
                .checked_sub(p.len())
                .and_then(|start| v.get(start..))
                .is_some_and(|t| t.eq_ignore_ascii_case(p.as_bytes())),
        }
    }

    /// The literal text when this is an exact pattern (used to index policies).
    pub fn as_exact(&self) -> Option<&str> {
        match self {
            Self::Exact(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(p) => f.write_str(p),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(p) => write!(f, "*{p}"),
        }
    }
}

// === SPIFFE ID shape ===

/// Checks that `id` is a SPIFFE ID: `spiffe://` + trust domain `[a-z0-9._-]+` + optional path of
/// segments `[a-zA-Z0-9._-]+`, none empty, `.` or `..`, no trailing slash.
pub fn check_spiffe_id(id: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} is not a SPIFFE ID; it must start with \"spiffe://\""))?;
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(d, p)| (d, Some(p)));
    check_trust_domain(domain).map_err(|e| format!("{id:?}: {e}"))?;
    if let Some(path) = path {
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!(
                    "{id:?} has an empty, \".\" or \"..\" path segment or a trailing slash; \
                     SPIFFE IDs do not allow them"
                ));
            }
            if !segment.bytes().all(is_path_byte) {
                return Err(format!(
                    "{id:?}: path segment {segment:?} may only use letters, digits, '.', '_' and '-'"
                ));
            }
        }
    }
    Ok(())
}

/// Checks a trust domain name: `[a-z0-9._-]+`.
pub fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
    {
        return Err(format!(
            "trust domain {domain:?} may only use lower-case letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_".contains(&b)
}

/// Parses a principal pattern and checks it is SPIFFE-ID shaped: an exact ID, `"spiffe://td/.."*`,
/// `"*/sa/name"` or `"*"`.
pub fn parse_principal(text: &str) -> Result<Pattern, String> {
    let pattern = Pattern::parse(text)?;
    match &pattern {
        Pattern::Any => {}
        Pattern::Exact(id) => check_spiffe_id(id)?,
        Pattern::Prefix(prefix) => {
            let rest = prefix.strip_prefix("spiffe://").ok_or_else(|| {
                format!("principal pattern {text:?} must start with \"spiffe://\"")
            })?;
            let (domain, path) = rest.split_once('/').map_or((rest, ""), |(d, p)| (d, p));
            if !domain.is_empty() || !path.is_empty() {
                check_trust_domain(domain).map_err(|e| format!("{text:?}: {e}"))?;
            }
            if path.contains("//") || !path.bytes().all(|b| b == b'/' || is_path_byte(b)) {
                return Err(format!(
                    "principal pattern {text:?} has characters a SPIFFE ID path cannot contain"
                ));
            }
        }
        Pattern::Suffix(suffix) => {
            if suffix.contains("//") || !suffix.bytes().all(|b| b == b'/' || is_path_byte(b)) {
                return Err(format!(
                    "principal pattern {text:?} has characters a SPIFFE ID path cannot contain"
                ));
            }
        }
    }
    Ok(pattern)
}

/// The trust domain of a SPIFFE ID, without allocating.
pub fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(d, _)| d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_forms() {
        assert!(Pattern::parse("*").unwrap().matches(""));
        let p = Pattern::parse("/ledger/*").unwrap();
        assert!(p.matches("/ledger/entries") && p.matches("/ledger/") && !p.matches("/ledge"));
        let s = Pattern::parse("*.example").unwrap();
        assert!(s.matches("a.example") && !s.matches("a.example.com"));
        let e = Pattern::parse("GET").unwrap();
        assert!(e.matches("GET") && !e.matches("get") && e.matches_ignore_case("get"));
        assert!(Pattern::parse("a*b").is_err() && Pattern::parse("*a*").is_err());
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn case_insensitive_prefix_and_suffix() {
        assert!(
            Pattern::parse("Ledger*")
                .unwrap()
                .matches_ignore_case("LEDGER.svc")
        );
        assert!(
            Pattern::parse("*.SVC")
                .unwrap()
                .matches_ignore_case("ledger.svc")
        );
        assert!(!Pattern::parse("*.svc").unwrap().matches_ignore_case("c"));
    }

    #[test]
    fn principals_must_be_spiffe_shaped() {
        assert!(parse_principal("spiffe://bank.example/ns/payments/sa/payments").is_ok());
        assert!(parse_principal("spiffe://bank.example/ns/reporting/*").is_ok());
        assert!(parse_principal("*/sa/payments").is_ok());
        assert!(parse_principal("*").is_ok());
        assert!(parse_principal("payments").is_err());
        assert!(parse_principal("spiffe://Bank.example/x").is_err());
        assert!(parse_principal("spiffe://bank.example/ns//x").is_err());
        assert!(parse_principal("spiffe://bank.example/ns/").is_err());
        assert!(parse_principal("spiffe://bank.example/ns/../x").is_err());
        assert!(parse_principal("http://bank.example/*").is_err());
    }

    #[test]
    fn trust_domain_is_sliced() {
        assert_eq!(
            trust_domain_of("spiffe://bank.example/ns/a"),
            Some("bank.example")
        );
        assert_eq!(
            trust_domain_of("spiffe://bank.example"),
            Some("bank.example")
        );
        assert_eq!(trust_domain_of("bank.example"), None);
    }
}
