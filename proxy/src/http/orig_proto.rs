//! Carrying HTTP/1 requests over the HTTP/2 connection between sidecars, and back (what Linkerd
//! does with `l5d-orig-proto`).
//!
//! The outbound sidecar turns an HTTP/1.x request into an HTTP/2 one and records the original
//! version in `meshguard-orig-proto`; the inbound sidecar removes the header and restores the
//! version, so the app sees the protocol its client spoke. A request without the header was
//! HTTP/2 from the start and stays HTTP/2.

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Uri, Version};

/// The header carrying the original version between sidecars.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("meshguard-orig-proto");

/// Why a request could not be upgraded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// An HTTP/1 request with no `Host` and no absolute URI.
    #[error("the request has no Host header; HTTP/1.1 requires one")]
    NoAuthority,
    /// The Host header is not a valid authority.
    #[error("the Host header is not a valid host[:port]")]
    BadAuthority,
}

/// Headers that describe one HTTP/1 connection and must not cross to HTTP/2 (RFC 9113 §8.2.2).
pub fn strip_connection_headers(headers: &mut HeaderMap) {
    // Headers the `Connection` header names are connection-specific too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// Turns an HTTP/1.x request into HTTP/2 for the hop between sidecars: the original version goes
/// into [`ORIG_PROTO`], the URI becomes absolute (HTTP/2 needs `:scheme` and `:authority`), and
/// connection-specific headers go. HTTP/2 requests pass unchanged.
pub fn upgrade_to_h2<B>(request: &mut Request<B>) -> Result<(), UpgradeError> {
    let original = request.version();
    if original == Version::HTTP_2 {
        request.headers_mut().remove(ORIG_PROTO);
        return Ok(());
    }
    let value = if original == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .ok_or(UpgradeError::NoAuthority)?;
            Authority::try_from(host.as_bytes()).map_err(|_| UpgradeError::BadAuthority)?
        }
    };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(parts.scheme.unwrap_or(Scheme::HTTP));
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpgradeError::BadAuthority)?;
    let headers = request.headers_mut();
    strip_connection_headers(headers);
    // `:authority` replaces Host in HTTP/2.
    headers.remove(header::HOST);
    headers.insert(ORIG_PROTO, HeaderValue::from_static(value));
    *request.version_mut() = Version::HTTP_2;
    Ok(())
}

/// The version to speak to the app: the one recorded by the peer sidecar (header removed), else
/// the version the request arrived with.
pub fn restore_version<B>(request: &mut Request<B>) -> Version {
    let restored = match request.headers_mut().remove(ORIG_PROTO) {
        Some(v) if v == "HTTP/1.0" => Version::HTTP_10,
        Some(v) if v == "HTTP/1.1" => Version::HTTP_11,
        _ => request.version(),
    };
    if restored != Version::HTTP_2 && request.version() == Version::HTTP_2 {
        // Give the app back its Host header, from `:authority`.
        if !request.headers().contains_key(header::HOST)
            && let Some(authority) = request.uri().authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    *request.version_mut() = restored;
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_round_trips_through_h2() {
        let mut req = Request::get("/a?b=c")
            .version(Version::HTTP_11)
            .header("host", "ledger:8080")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "gzip")
            .header("x-end", "kept")
            .body(())
            .unwrap();
        upgrade_to_h2(&mut req).unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://ledger:8080/a?b=c");
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");
        for gone in ["connection", "x-hop", "keep-alive", "te", "host"] {
            assert!(!req.headers().contains_key(gone), "{gone}");
        }
        assert_eq!(req.headers()["x-end"], "kept");

        assert_eq!(restore_version(&mut req), Version::HTTP_11);
        assert_eq!(req.version(), Version::HTTP_11);
        assert!(!req.headers().contains_key(ORIG_PROTO));
        assert_eq!(req.headers()["host"], "ledger:8080");
    }

    #[test]
    fn h2_stays_h2_and_a_spoofed_marker_is_dropped() {
        let mut req = Request::get("http://svc/x")
            .version(Version::HTTP_2)
            .header(ORIG_PROTO, "HTTP/1.1")
            .body(())
            .unwrap();
        upgrade_to_h2(&mut req).unwrap();
        assert!(!req.headers().contains_key(ORIG_PROTO));
        assert_eq!(restore_version(&mut req), Version::HTTP_2);
        let mut req = Request::get("http://svc/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(restore_version(&mut req), Version::HTTP_2);
    }

    #[test]
    fn http1_without_host_is_refused() {
        let mut req = Request::get("/x")
            .version(Version::HTTP_11)
            .body(())
            .unwrap();
        assert_eq!(upgrade_to_h2(&mut req), Err(UpgradeError::NoAuthority));
        let mut req = Request::get("/x")
            .version(Version::HTTP_10)
            .header("host", "a b")
            .body(())
            .unwrap();
        assert_eq!(upgrade_to_h2(&mut req), Err(UpgradeError::BadAuthority));
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_connection_headers(&mut h);
        assert_eq!(h["te"], "trailers");
    }
}
