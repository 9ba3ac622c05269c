//! What is being decided: a borrowed [`Request`] the proxy builds without allocating, and its owned
//! JSON form [`RequestDoc`] (the CLI input and, field for field, the Rego `input` document).
//!
//! ```json
//! {"principal": "spiffe://bank.example/ns/accounting/sa/reporter", "source_ip": "10.0.0.5",
//!  "port": 8080, "sni": "ledger", "method": "GET", "host": "ledger", "path": "/ledger/balances",
//!  "headers": {"x-role": "auditor"}, "time": "2026-11-23T10:00:00Z"}
//! ```
//! A request without `method` is a connection-level (L4) request. `principal` absent means the
//! peer is not authenticated; `time` is the proxy's clock, never the caller's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Header lookup by lower-case name, implemented for the maps the proxy and the CLI hold.
///
/// One rule everywhere: a header may carry several values (repeated fields). Matching asks
/// whether ANY value matches; the Rego input and the decision log see the values joined with
/// `", "` in order, as HTTP combines them ([`joined`]). A value that is not valid UTF-8 is
/// present but has no text: it matches `*` and presence checks, never a literal pattern.
pub trait Headers {
    /// Calls `f` with each value of header `name` (lower case), in order, until `f` returns true,
    /// and says whether it did. A value that is not text is passed as `None`.
    fn any_value(&self, name: &str, f: &mut dyn FnMut(Option<&str>) -> bool) -> bool;
    /// Calls `f` for every header field, repeated fields once per value (used only to build a
    /// Rego input or a log record); a value that is not text comes lossily converted.
    fn for_each(&self, f: &mut dyn FnMut(&str, &str));
}

/// Every header by lower-case name, repeated values joined with `", "` in order.
pub fn joined(headers: &dyn Headers) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    headers.for_each(&mut |k, v| {
        map.entry(k.to_ascii_lowercase())
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    });
    map
}

impl Headers for BTreeMap<String, String> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(Option<&str>) -> bool) -> bool {
        BTreeMap::get(self, name).is_some_and(|v| f(Some(v)))
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        self.iter().for_each(|(k, v)| f(k, v));
    }
}

impl<S: std::hash::BuildHasher> Headers for HashMap<String, String, S> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(Option<&str>) -> bool) -> bool {
        HashMap::get(self, name).is_some_and(|v| f(Some(v)))
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        self.iter().for_each(|(k, v)| f(k, v));
    }
}

impl Headers for &[(&str, &str)] {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(Option<&str>) -> bool) -> bool {
        self.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| f(Some(v)))
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        self.iter().for_each(|(k, v)| f(k, v));
    }
}

impl Headers for http::HeaderMap {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(Option<&str>) -> bool) -> bool {
        self.get_all(name)
            .iter()
            .any(|v| f(std::str::from_utf8(v.as_bytes()).ok()))
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            f(k.as_str(), &String::from_utf8_lossy(v.as_bytes()));
        }
    }
}

/// A borrowed view of one connection or request. Fields that are `None` are unknown or, for a
/// connection-level request, not there at all.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The peer's SPIFFE ID from its verified certificate; `None` when not authenticated.
    pub principal: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    /// Destination port.
    pub port: Option<u16>,
    pub sni: Option<&'a str>,
    /// HTTP method; `None` makes this a connection-level (L4) request.
    pub method: Option<&'a str>,
    /// HTTP authority / Host, possibly with a port.
    pub host: Option<&'a str>,
    /// HTTP path, possibly with a query string (ignored for matching).
    pub path: Option<&'a str>,
    pub headers: Option<&'a dyn Headers>,
    /// The proxy's clock at decision time.
    pub time: Timestamp,
}

impl<'a> Request<'a> {
    /// A connection-level request with nothing known but the time.
    pub fn connection(time: Timestamp) -> Self {
        Self {
            principal: None,
            source_ip: None,
            port: None,
            sni: None,
            method: None,
            host: None,
            path: None,
            headers: None,
            time,
        }
    }

    /// Whether this is a connection-level (L4) decision, with no HTTP attributes.
    pub fn is_connection_level(&self) -> bool {
        self.method.is_none()
    }

    /// The host without a `:port` suffix (IPv6 literals keep their brackets).
    pub fn host_name(&self) -> Option<&'a str> {
        let host = self.host?;
        if host.starts_with('[') {
            return Some(
                host.split_once(']')
                    .map_or(host, |(h, _)| &host[..=h.len()]),
            );
        }
        Some(match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        })
    }

    /// The path without its query string.
    pub fn path_only(&self) -> Option<&'a str> {
        let path = self.path?;
        Some(path.split_once('?').map_or(path, |(p, _)| p))
    }

    /// An owned copy, for logs and the CLI.
    pub fn to_doc(&self) -> RequestDoc {
        let headers = self.headers.map(joined);
        RequestDoc {
            principal: self.principal.map(str::to_owned),
            source_ip: self.source_ip,
            port: self.port,
            sni: self.sni.map(str::to_owned),
            method: self.method.map(str::to_owned),
            host: self.host.map(str::to_owned),
            path: self.path.map(str::to_owned),
            headers,
            time: Some(self.time),
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may carry credentials: only the names are shown.
        let mut names = Vec::new();
        if let Some(h) = self.headers {
            h.for_each(&mut |k, _| names.push(k.to_owned()));
        }
        f.debug_struct("Request")
            .field("principal", &self.principal)
            .field("source_ip", &self.source_ip)
            .field("port", &self.port)
            .field("sni", &self.sni)
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("header_names", &names)
            .field("time", &self.time)
            .finish()
    }
}

/// The owned JSON form of a request (CLI input, Rego `input`, decision-log summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Header names are matched in lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// RFC 3339; when absent the caller supplies the time (the CLI uses the current time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

impl RequestDoc {
    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self, crate::PolicyError> {
        let mut doc: Self =
            serde_json::from_str(text).map_err(|e| crate::PolicyError::Request {
                message: e.to_string(),
            })?;
        doc.normalize();
        Ok(doc)
    }

    /// Lower-cases header names so lookups by lower-case name find them.
    pub fn normalize(&mut self) {
        if let Some(headers) = self.headers.take() {
            self.headers = Some(
                headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
            );
        }
    }

    /// A borrowed view, with `default_time` used when the document has no `time`.
    pub fn as_request(&self, default_time: Timestamp) -> Request<'_> {
        Request {
            principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            port: self.port,
            sni: self.sni.as_deref(),
            method: self.method.as_deref(),
            host: self.host.as_deref(),
            path: self.path.as_deref(),
            headers: self.headers.as_ref().map(|h| h as &dyn Headers),
            time: self.time.unwrap_or(default_time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_view() {
        let doc = RequestDoc::from_json(
            r#"{"principal":"spiffe://b/x","source_ip":"10.0.0.5","port":8080,"method":"GET",
                "host":"Ledger:8443","path":"/a?b=c","headers":{"X-Role":"auditor"},
                "time":"2026-11-23T10:00:00Z"}"#,
        )
        .unwrap();
        let req = doc.as_request(Timestamp::UNIX_EPOCH);
        assert_eq!(req.host_name(), Some("Ledger"));
        assert_eq!(req.path_only(), Some("/a"));
        assert!(
            req.headers
                .unwrap()
                .any_value("x-role", &mut |v| v == Some("auditor"))
        );
        assert!(!req.is_connection_level());
        assert_eq!(req.to_doc(), doc);
        assert!(RequestDoc::from_json(r#"{"princpal":"x"}"#).is_err());
    }

    #[test]
    fn ipv6_host_keeps_brackets() {
        let mut req = Request::connection(Timestamp::UNIX_EPOCH);
        req.host = Some("[::1]:8080");
        assert_eq!(req.host_name(), Some("[::1]"));
        req.host = Some("ledger");
        assert_eq!(req.host_name(), Some("ledger"));
    }
}
