//! Validated value types of the config file. Each parses from the string the operator wrote, so a bad
//! value is reported by the TOML deserializer at its own line and column.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use meshguard_identity::ExpectedIdentities;
#[cfg(test)]
use meshguard_identity::SpiffeId;
use serde::{Deserialize, Serialize};

// === impl Target ===

/// Where a listener connects to: `HOST:PORT`, the host an IP address or a DNS name (a gateway's
/// legacy host often has only a name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// The host part, without brackets for IPv6.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port part.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The target's IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// A target from a socket address (used by transparent routes that keep the original host).
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::from_addr(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!("target `{text}` has no port: write it as HOST:PORT, e.g. `10.0.0.7:15006`")
        })?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("target `{text}` has an invalid port `{port}`: use 1-65535"))?;
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid_name || port == 0 {
            return Err(format!(
                "target `{text}` is not HOST:PORT with an IP address or DNS name and a port 1-65535"
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Target> for String {
    fn from(target: Target) -> String {
        target.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

// === impl ExpectedId ===

/// One entry of an `expect` list: an exact SPIFFE ID, or `spiffe://TD/PREFIX/*` for every ID in a
/// trust domain under a path prefix (`spiffe://TD/*` for the whole trust domain). Validated here
/// with identity's own parser, so the config accepts exactly what [`ExpectedIdentities`] matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExpectedId(String);

impl ExpectedId {
    /// The entries as identity's matcher.
    pub fn to_expected(entries: &[Self]) -> ExpectedIdentities {
        // Every entry was validated by the same parser when the config was read.
        ExpectedIdentities::parse(entries).unwrap_or_else(|_| ExpectedIdentities::exact([]))
    }
}

impl AsRef<str> for ExpectedId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ExpectedId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ExpectedIdentities::parse(&[text]).map_err(|error| {
            format!("expected identity `{text}` is not a SPIFFE ID: {error} (write `spiffe://TD/PATH`, or `spiffe://TD/PREFIX/*`)")
        })?;
        Ok(Self(text.to_owned()))
    }
}

impl TryFrom<String> for ExpectedId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<ExpectedId> for String {
    fn from(id: ExpectedId) -> String {
        id.0
    }
}

impl fmt::Display for ExpectedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Cidr ===

/// An IP network in CIDR notation; a bare address means that single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether the network contains the address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    /// The prefix length (longer is more specific).
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether it is an IPv4 network (else IPv6).
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| {
                format!("`{text}` is not an IP network: write it like `10.0.0.0/24` or `10.0.0.7`")
            })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.0.to_string()
    }
}

// === impl HumanDuration ===

/// A duration written like `5s`, `250ms`, `1h 30m` or ISO 8601 `PT5S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(Duration);

impl HumanDuration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let signed: jiff::SignedDuration = text.parse().map_err(|error| {
            format!("`{text}` is not a duration ({error}): write it like `5s`, `250ms` or `1h`")
        })?;
        Duration::try_from(signed)
            .map(Self)
            .map_err(|_| format!("duration `{text}` is negative: use a positive duration"))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<HumanDuration> for String {
    fn from(duration: HumanDuration) -> String {
        format!(
            "{:#}",
            jiff::SignedDuration::try_from(duration.0).unwrap_or(jiff::SignedDuration::MAX)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_addresses_and_names() {
        assert_eq!("10.0.0.7:15006".parse::<Target>().unwrap().port(), 15006);
        assert_eq!("[::1]:80".parse::<Target>().unwrap().host(), "::1");
        assert_eq!(
            "[::1]:80".parse::<Target>().unwrap().to_string(),
            "[::1]:80"
        );
        assert_eq!(
            "Legacy.Bank.Example:23".parse::<Target>().unwrap().host(),
            "legacy.bank.example"
        );
        for bad in ["10.0.0.7", "host:", "host:0", "host:70000", ":80", "a b:80"] {
            assert!(bad.parse::<Target>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn expected_ids_match_exactly_or_by_prefix() {
        let ledger = SpiffeId::parse("spiffe://bank.example/ns/ledger/sa/ledger").unwrap();
        let ledger2 = SpiffeId::parse("spiffe://bank.example/ns/ledgerx/sa/x").unwrap();
        let entries: Vec<ExpectedId> = vec!["spiffe://bank.example/ns/ledger/*".parse().unwrap()];
        let expected = ExpectedId::to_expected(&entries);
        assert!(expected.matches(&ledger));
        assert!(
            !expected.matches(&ledger2),
            "a prefix matches whole segments only"
        );
        assert_eq!(entries[0].to_string(), "spiffe://bank.example/ns/ledger/*");
        assert!("https://bank.example/x".parse::<ExpectedId>().is_err());
        assert!("spiffe://bank.example/a//b".parse::<ExpectedId>().is_err());
    }

    #[test]
    fn cidrs_and_durations_parse() {
        let net: Cidr = "10.0.0.9/24".parse().unwrap();
        assert!(net.contains("10.0.0.200".parse().unwrap()));
        assert!(!net.contains("10.0.1.1".parse().unwrap()));
        assert_eq!("10.0.0.7".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert_eq!(
            "5s".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(5)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().get(),
            Duration::from_millis(250)
        );
        assert!("-5s".parse::<HumanDuration>().is_err());
        assert!("soon".parse::<HumanDuration>().is_err());
    }
}
