//! The one authority a request is authorized on, and forwarded with.
//!
//! A request can name its host twice: in the target (HTTP/1.1 absolute-form, HTTP/2
//! `:authority`, CONNECT) and in `Host`. If policy matched one and the app read the other, a
//! `hosts` rule for `public` would let a request reach the app as `admin`. So the proxy reads
//! every view once, canonicalizes each (lower case, no trailing dot, no default port), refuses
//! the request (400) when they disagree, as RFC 9113 §8.3.1 lets a server do, and rewrites both
//! views to the canonical one before policy sees the request.

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri};

/// Why a request's authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// More than one `Host` header.
    #[error("the request has more than one Host header; send one")]
    RepeatedHost,
    /// A `Host` that is not a valid authority.
    #[error("the request's Host header is not a valid host[:port]")]
    InvalidHost,
    /// `user@host`: deprecated for http(s) URIs and a classic way to confuse a reader.
    #[error("the request's authority carries user information (`user@`); send the host alone")]
    UserInfo,
    /// An empty host (`Host:` or `:80`).
    #[error("the request's authority has an empty host")]
    EmptyHost,
    /// The target and `Host` name different hosts.
    #[error("the request names two hosts, `{target}` in its target and `{host}` in Host; send one")]
    Disagree {
        /// The target's authority, canonicalized.
        target: String,
        /// `Host`, canonicalized.
        host: String,
    },
}

/// Reads the request's authority from its target and `Host`, canonicalizes it, refuses
/// disagreement, and writes the canonical form back into whichever views the request had.
/// `None` when the request names no host at all (HTTP/1.0 without `Host`).
pub fn settle_authority<B>(request: &mut Request<B>) -> Result<Option<Authority>, AuthorityError> {
    let scheme = request.uri().scheme().cloned();
    let target = request
        .uri()
        .authority()
        .map(|a| canonical(a, scheme.as_ref()))
        .transpose()?;
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(value), None) => {
            let parsed =
                Authority::try_from(value.as_bytes()).map_err(|_| AuthorityError::InvalidHost)?;
            Some(canonical(&parsed, scheme.as_ref())?)
        }
        (Some(_), Some(_)) => return Err(AuthorityError::RepeatedHost),
    };
    let settled = match (target, host) {
        (Some(target), Some(host)) if target != host => {
            return Err(AuthorityError::Disagree {
                target: target.to_string(),
                host: host.to_string(),
            });
        }
        (Some(one), _) | (None, Some(one)) => one,
        (None, None) => return Ok(None),
    };
    write_back(request, &settled);
    Ok(Some(settled))
}

/// Lower case, no trailing dot on the host, no port when it is the scheme's default (80 or 443
/// when the scheme is not known, as for an origin-form HTTP/1.1 request), no user information.
fn canonical(authority: &Authority, scheme: Option<&Scheme>) -> Result<Authority, AuthorityError> {
    if authority.as_str().contains('@') {
        return Err(AuthorityError::UserInfo);
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() {
        return Err(AuthorityError::EmptyHost);
    }
    let default_port = |port: u16| match scheme.map(Scheme::as_str) {
        Some("http") => port == 80,
        Some("https") => port == 443,
        _ => port == 80 || port == 443,
    };
    let text = match authority.port_u16() {
        Some(port) if !default_port(port) => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    // Every part came from a valid authority, so this parses; refuse rather than panic if not.
    text.parse().map_err(|_| AuthorityError::InvalidHost)
}

/// Replaces the target's authority and `Host` (each only where present) with `settled`.
fn write_back<B>(request: &mut Request<B>, settled: &Authority) {
    // `Authority`'s `==` ignores case, so compare the text.
    if request
        .uri()
        .authority()
        .is_some_and(|a| a.as_str() != settled.as_str())
    {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(settled.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    if let Some(host) = request.headers_mut().get_mut(header::HOST)
        && host.as_bytes() != settled.as_str().as_bytes()
        && let Ok(value) = HeaderValue::from_str(settled.as_str())
    {
        *host = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(target);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).unwrap()
    }

    fn settled(target: &str, hosts: &[&str]) -> Result<Option<String>, AuthorityError> {
        let mut request = request(target, hosts);
        let settled = settle_authority(&mut request)?;
        // Whatever the request carried now says the settled authority, and only that.
        if let Some(settled) = &settled {
            if let Some(authority) = request.uri().authority() {
                assert_eq!(authority.as_str(), settled.as_str());
            }
            if let Some(host) = request.headers().get(header::HOST) {
                assert_eq!(host.to_str().unwrap(), settled.as_str());
            }
        }
        Ok(settled.map(|a| a.to_string()))
    }

    #[test]
    fn views_are_canonicalized() {
        for (target, hosts, want) in [
            ("/a", &["Ledger.Bank.Example"][..], "ledger.bank.example"),
            ("/a", &["ledger.bank.example."], "ledger.bank.example"),
            ("/a", &["ledger:80"], "ledger"),
            ("/a", &["ledger:443"], "ledger"),
            ("/a", &["ledger:8443"], "ledger:8443"),
            ("/a", &["ledger:"], "ledger"),
            ("/a", &["[::1]:80"], "[::1]"),
            ("http://LEDGER:80/a", &[], "ledger"),
            ("https://ledger:443/a", &[], "ledger"),
            ("http://ledger:443/a", &[], "ledger:443"),
            ("http://ledger./a", &["LEDGER:80"], "ledger"),
        ] {
            assert_eq!(
                settled(target, hosts).unwrap().as_deref(),
                Some(want),
                "{target} {hosts:?}"
            );
        }
        assert_eq!(settled("/a", &[]).unwrap(), None);
    }

    #[test]
    fn disagreeing_or_ambiguous_views_are_refused() {
        assert_eq!(
            settled("http://admin/a", &["public"]),
            Err(AuthorityError::Disagree {
                target: "admin".into(),
                host: "public".into()
            })
        );
        assert!(matches!(
            settled("http://ledger:8443/a", &["ledger"]),
            Err(AuthorityError::Disagree { .. })
        ));
        assert_eq!(
            settled("/a", &["public", "admin"]),
            Err(AuthorityError::RepeatedHost)
        );
        assert_eq!(
            settled("/a", &["public@admin"]),
            Err(AuthorityError::UserInfo)
        );
        assert_eq!(
            settled("http://public@admin/a", &[]),
            Err(AuthorityError::UserInfo)
        );
        assert_eq!(settled("/a", &["a b"]), Err(AuthorityError::InvalidHost));
        assert_eq!(settled("/a", &["."]), Err(AuthorityError::EmptyHost));
    }

    #[test]
    fn errors_say_what_to_do() {
        let error = settled("http://admin/a", &["public"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the request names two hosts, `admin` in its target and `public` in Host; send one"
        );
    }
}
