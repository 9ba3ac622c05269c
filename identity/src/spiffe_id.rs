//! SPIFFE IDs and trust domains, parsed by every rule of the SPIFFE ID specification.
//!
//! A `SpiffeId` is only ever constructed by the parser, so holding one proves the text is valid:
//! `spiffe://` + trust domain (`[a-z0-9._-]`, at most 255 bytes) + an optional path of segments
//! (`[a-zA-Z0-9._-]`, none empty, none `.` or `..`, no trailing slash), at most 2048 bytes in all.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID or trust domain; each variant names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("a SPIFFE ID cannot be empty")]
    Empty,
    #[error("a SPIFFE ID must start with the lowercase scheme `spiffe://` (got {0:?})")]
    WrongScheme(String),
    #[error("a SPIFFE ID must name a trust domain after `spiffe://`")]
    MissingTrustDomain,
    #[error(
        "trust domain character {ch:?} at byte {at} is not allowed: use only lowercase letters, digits, `.`, `-` and `_` (no port, user info or uppercase)"
    )]
    TrustDomainChar { ch: char, at: usize },
    #[error("a trust domain may be at most {MAX_TRUST_DOMAIN_LEN} bytes (got {0})")]
    TrustDomainTooLong(usize),
    #[error(
        "path character {ch:?} at byte {at} is not allowed: path segments use only letters, digits, `.`, `-` and `_` (no percent-encoding, query or fragment)"
    )]
    PathChar { ch: char, at: usize },
    #[error("a SPIFFE ID path cannot contain an empty segment (`//`)")]
    EmptySegment,
    #[error("a SPIFFE ID path cannot end with a slash")]
    TrailingSlash,
    #[error("a SPIFFE ID path cannot contain `.` or `..` segments")]
    DotSegment,
    #[error("a SPIFFE ID may be at most {MAX_ID_LEN} bytes (got {0})")]
    TooLong(usize),
}

/// A SPIFFE trust domain such as `bank.example`: the name of a trust root, never a host to dial.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

/// A SPIFFE ID such as `spiffe://bank.example/ns/payments/sa/payments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    text: String,
    /// Byte offset where the path starts (== text.len() when there is no path).
    path_at: usize,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a bare trust domain name (`bank.example`) or the ID of a trust domain
    /// (`spiffe://bank.example`).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.contains("://") {
            let id = SpiffeId::parse(text)?;
            if !id.path().is_empty() {
                return Err(IdError::PathChar {
                    ch: '/',
                    at: id.path_at,
                });
            }
            return Ok(id.trust_domain());
        }
        validate_trust_domain(text, 0)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID that names the trust domain itself, `spiffe://<td>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            text: format!("{SCHEME}{}", self.0),
            path_at: SCHEME.len() + self.0.len(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(text.len()));
        }
        let Some(rest) = text.strip_prefix(SCHEME) else {
            let shown: String = text.chars().take(16).collect();
            return Err(IdError::WrongScheme(shown));
        };
        let td_len = rest.find('/').unwrap_or(rest.len());
        let trust_domain = &rest[..td_len];
        if trust_domain.is_empty() {
            return Err(IdError::MissingTrustDomain);
        }
        validate_trust_domain(trust_domain, SCHEME.len())?;
        let path_at = SCHEME.len() + td_len;
        validate_path(&text[path_at..], path_at)?;
        Ok(Self {
            text: text.to_owned(),
            path_at,
        })
    }

    /// Builds `spiffe://<td><path>`; `path` must be empty or start with `/`.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, IdError> {
        Self::parse(&format!("{SCHEME}{trust_domain}{path}"))
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.text[SCHEME.len()..self.path_at]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.text[self.path_at..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when this ID is in `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

// === validation ===

fn validate_trust_domain(td: &str, offset: usize) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    for (i, ch) in td.char_indices() {
        let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '-' | '_');
        if !ok {
            return Err(IdError::TrustDomainChar { ch, at: offset + i });
        }
    }
    Ok(())
}

fn validate_path(path: &str, offset: usize) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash);
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    let mut at = offset + 1;
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment);
        }
        for (i, ch) in segment.char_indices() {
            let ok = ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_');
            if !ok {
                return Err(IdError::PathChar { ch, at: at + i });
            }
        }
        at += segment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = SpiffeId::parse("spiffe://bank.example/ns/payments/sa/payments").unwrap();
        assert_eq!(id.trust_domain_str(), "bank.example");
        assert_eq!(id.path(), "/ns/payments/sa/payments");
        assert_eq!(
            id.to_string(),
            "spiffe://bank.example/ns/payments/sa/payments"
        );
        let root = SpiffeId::parse("spiffe://td-1_x.example").unwrap();
        assert_eq!(root.path(), "");
        assert_eq!(root, TrustDomain::parse("td-1_x.example").unwrap().id());
        assert!(SpiffeId::parse("spiffe://a/B.c-d_E/..a/a..").is_ok());
    }

    #[test]
    fn each_rejection_names_its_rule() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("http://a/b", IdError::WrongScheme("http://a/b".into())),
            ("SPIFFE://a/b", IdError::WrongScheme("SPIFFE://a/b".into())),
            ("spiffe:///b", IdError::MissingTrustDomain),
            ("spiffe://", IdError::MissingTrustDomain),
            (
                "spiffe://Bank/b",
                IdError::TrustDomainChar { ch: 'B', at: 9 },
            ),
            (
                "spiffe://a:8080/b",
                IdError::TrustDomainChar { ch: ':', at: 10 },
            ),
            (
                "spiffe://u@a/b",
                IdError::TrustDomainChar { ch: '@', at: 10 },
            ),
            ("spiffe://a/b%2Fc", IdError::PathChar { ch: '%', at: 12 }),
            ("spiffe://a/b?x=1", IdError::PathChar { ch: '?', at: 12 }),
            ("spiffe://a/b#f", IdError::PathChar { ch: '#', at: 12 }),
            ("spiffe://a/b//c", IdError::EmptySegment),
            ("spiffe://a/b/", IdError::TrailingSlash),
            ("spiffe://a/", IdError::TrailingSlash),
            ("spiffe://a/./b", IdError::DotSegment),
            ("spiffe://a/b/..", IdError::DotSegment),
        ];
        for (text, want) in cases {
            assert_eq!(SpiffeId::parse(text).as_ref(), Err(want), "{text}");
        }
        let long_td = format!("spiffe://{}", "a".repeat(256));
        assert_eq!(
            SpiffeId::parse(&long_td),
            Err(IdError::TrustDomainTooLong(256))
        );
        let long_id = format!("spiffe://a/{}", "b".repeat(2100));
        assert!(matches!(
            SpiffeId::parse(&long_id),
            Err(IdError::TooLong(_))
        ));
    }

    #[test]
    fn trust_domain_accepts_name_or_id_but_not_a_path() {
        assert_eq!(
            TrustDomain::parse("spiffe://bank.example")
                .unwrap()
                .as_str(),
            "bank.example"
        );
        assert!(TrustDomain::parse("spiffe://bank.example/x").is_err());
        assert!(TrustDomain::parse("Bank").is_err());
        assert!(TrustDomain::parse("").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://a/b\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://a/b\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://a/b/\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_valid_ids_round_trip(s in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                proptest::prop_assert_eq!(id.as_str(), s.as_str());
                proptest::prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
            }
        }

        #[test]
        fn generated_valid_ids_parse(td in "[a-z0-9._-]{1,20}", segs in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,8}", 0..5)) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            let text = format!("spiffe://{td}{path}");
            let id = SpiffeId::parse(&text).unwrap();
            proptest::prop_assert_eq!(id.trust_domain_str(), td.as_str());
            proptest::prop_assert_eq!(id.path(), path.as_str());
        }
    }
}
