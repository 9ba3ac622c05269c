//! The policy file format, parsed straight into validated types (parse, don't validate): a bad
//! pattern, CIDR, day or zone is a serde error, which the toml crate places at its line and column.
//!
//! ```toml
//! default = "deny"                 # deny | allow-authenticated | audit
//!
//! [[policy]]
//! name = "payments-write-entries"
//! action = "allow"                 # allow | deny | audit
//! enforce = true                   # false = dry-run
//! principals = ["spiffe://bank.example/ns/payments/sa/payments"]
//! methods = ["POST"]
//! paths = ["/ledger/entries", "/ledger/entries/*"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::decision::DefaultMode;
use crate::hours::Hours;
use crate::pattern::{self, Pattern};
use crate::{Location, PolicyError};

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Log the match; never changes the outcome.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

/// One policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSpec {
    #[serde(default)]
    pub(crate) default: Option<Spanned<DefaultMode>>,
    #[serde(default)]
    pub(crate) policy: Vec<PolicySpec>,
}

/// One `[[policy]]` table. A list is OR, fields are AND, an absent field matches anything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    pub(crate) name: Spanned<String>,
    pub(crate) action: Action,
    #[serde(default = "enforce_default")]
    pub(crate) enforce: bool,
    /// The deny reason shown to operators and in the log (default: "denied by policy NAME").
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) principals: Option<List<Principal>>,
    #[serde(default)]
    pub(crate) not_principals: Option<List<Principal>>,
    #[serde(default)]
    pub(crate) trust_domains: Option<List<TrustDomain>>,
    #[serde(default)]
    pub(crate) not_trust_domains: Option<List<TrustDomain>>,
    #[serde(default)]
    pub(crate) source_cidrs: Option<List<Cidr>>,
    #[serde(default)]
    pub(crate) not_source_cidrs: Option<List<Cidr>>,
    #[serde(default)]
    pub(crate) ports: Option<List<u16>>,
    #[serde(default)]
    pub(crate) not_ports: Option<List<u16>>,
    #[serde(default)]
    pub(crate) sni: Option<List<Plain>>,
    #[serde(default)]
    pub(crate) not_sni: Option<List<Plain>>,
    #[serde(default)]
    pub(crate) methods: Option<List<Method>>,
    #[serde(default)]
    pub(crate) not_methods: Option<List<Method>>,
    #[serde(default)]
    pub(crate) hosts: Option<List<Plain>>,
    #[serde(default)]
    pub(crate) not_hosts: Option<List<Plain>>,
    #[serde(default)]
    pub(crate) paths: Option<List<UrlPath>>,
    #[serde(default)]
    pub(crate) not_paths: Option<List<UrlPath>>,
    #[serde(default)]
    pub(crate) headers: Option<BTreeMap<HeaderName, Plain>>,
    #[serde(default)]
    pub(crate) not_headers: Option<BTreeMap<HeaderName, Plain>>,
    #[serde(default)]
    pub(crate) hours: Option<Hours>,
    /// Path of a Rego v1 module, relative to this file.
    #[serde(default)]
    pub(crate) rego: Option<Spanned<String>>,
}

fn enforce_default() -> bool {
    true
}

impl FileSpec {
    /// Parses one file's text; errors carry `file:line:column`.
    pub(crate) fn parse(file: &Path, text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::from_toml(file, text, &e))
    }
}

/// The location of a spanned value in `text`.
pub(crate) fn location<T>(file: &Path, text: &str, value: &Spanned<T>) -> Location {
    Location::at_offset(file, text, value.span().start)
}

// === Validated field types ===

/// A non-empty list (an empty list would match nothing, which is never what was meant).
#[derive(Debug, Clone)]
pub(crate) struct List<T>(pub(crate) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<T>::deserialize(d)?;
        if items.is_empty() {
            return Err(serde::de::Error::custom(
                "an empty list matches nothing; remove the key to match anything",
            ));
        }
        Ok(Self(items))
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub(crate) struct $name(pub(crate) $inner);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&text).map(Self)
            }
        }
    };
}

string_newtype!(
    /// A SPIFFE-ID-shaped principal pattern.
    Principal(Pattern), pattern::parse_principal
);
string_newtype!(
    /// A trust domain name or pattern.
    TrustDomain(Pattern), |t| {
        let p = Pattern::parse(t)?;
        let literal = t.trim_matches('*');
        if !literal.is_empty() {
            pattern::check_trust_domain(literal)?;
        }
        Ok(p)
    }
);
string_newtype!(
    /// Any pattern (SNI, host, header value).
    Plain(Pattern), Pattern::parse
);
string_newtype!(
    /// An HTTP method, upper case.
    Method(Pattern), |t| {
        if !t.bytes().all(|b| b.is_ascii_uppercase() || b == b'*' || b == b'-' || b == b'_') {
            return Err(format!("method {t:?} must be upper case, e.g. \"GET\""));
        }
        Pattern::parse(t)
    }
);
string_newtype!(
    /// A URL path pattern: starts with `/` or `*`.
    UrlPath(Pattern), |t| {
        if !t.starts_with('/') && !t.starts_with('*') {
            return Err(format!("path {t:?} must start with \"/\" (or \"*\" for a suffix pattern)"));
        }
        if t.contains('?') {
            return Err(format!("path {t:?} has a query string; paths are matched without it"));
        }
        Pattern::parse(t)
    }
);
string_newtype!(
    /// A CIDR block such as `10.0.0.0/8`; a bare address means a single host. An IPv4-mapped
    /// block (`::ffff:192.0.2.0/120`) is stored as its IPv4 form, since requests' source
    /// addresses are compared in canonical form.
    Cidr(ipnet::IpNet), |t| {
        t.parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(|net| canonical_net(net.trunc()))
            .map_err(|_| format!("{t:?} is not a CIDR block such as \"10.0.0.0/8\" or an IP address"))
    }
);
string_newtype!(
    /// A header name, stored lower case.
    HeaderName(String), |t| {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b)) {
            return Err(format!("{t:?} is not a valid HTTP header name"));
        }
        Ok(t.to_ascii_lowercase())
    }
);

/// `::ffff:a.b.c.d/n` with `n >= 96` as `a.b.c.d/(n - 96)`; anything else unchanged.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

impl<'de> Deserialize<'de> for Hours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = crate::hours::HoursSpec::deserialize(d)?;
        Hours::try_from(spec).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        FileSpec::parse(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_the_contract_example() {
        let text = r#"
default = "deny"

[[policy]]
name = "payments-write-entries"
action = "allow"
enforce = true
principals = ["spiffe://bank.example/ns/payments/sa/payments"]
methods = ["POST"]
paths = ["/ledger/entries", "/ledger/entries/*"]

[[policy]]
name = "reporting-read-in-hours"
action = "allow"
principals = ["spiffe://bank.example/ns/reporting/*"]
methods = ["GET"]
paths = ["/ledger/balances"]
hours = { days = "Mon-Fri", from = "09:00", to = "17:00", tz = "Europe/London" }
"#;
        let spec = FileSpec::parse(Path::new("p.toml"), text).unwrap();
        assert_eq!(spec.policy.len(), 2);
        assert!(spec.policy[1].hours.is_some());
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = err("[[policy]]\nname = \"a\"\naction = \"allow\"\nprincipals = [\"payments\"]\n");
        assert!(e.starts_with("p.toml:4:"), "{e}");
        assert!(e.contains("SPIFFE"), "{e}");
        let e = err("[[policy]]\nname = \"a\"\naction = \"allow\"\nmethod = [\"GET\"]\n");
        assert!(e.starts_with("p.toml:4:1"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("default = \"maybe\"\n");
        assert!(e.starts_with("p.toml:1:11"), "{e}");
        let e = err("[[policy]]\nname = \"a\"\naction = \"allow\"\npaths = []\n");
        assert!(
            e.contains("empty list") && e.starts_with("p.toml:4:"),
            "{e}"
        );
        let e =
            err("[[policy]]\nname = \"a\"\naction = \"allow\"\nsource_cidrs = [\"10.0.0.0/33\"]\n");
        assert!(e.contains("CIDR") && e.starts_with("p.toml:4:"), "{e}");
        let e = err(
            "[[policy]]\nname = \"a\"\naction = \"allow\"\nhours = { from = \"9\", to = \"17:00\" }\n",
        );
        assert!(e.contains("HH:MM") && e.starts_with("p.toml:4:"), "{e}");
    }
}
