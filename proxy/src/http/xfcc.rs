//! `x-forwarded-client-cert`: the caller's identity, told to the app by the inbound sidecar in
//! Envoy's format (`By=<local id>;URI=<peer id>`).
//!
//! The header is only worth trusting if the proxy is its sole author: every copy arriving from the
//! network is removed before the proxy's own is set, and when the peer has no verified identity
//! none is set at all.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The header's name.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Replaces any incoming `x-forwarded-client-cert` with `By=<local>;URI=<peer>`; with no verified
/// peer identity the header is only removed.
pub fn set_xfcc(headers: &mut HeaderMap, local_id: &str, peer_id: Option<&str>) {
    // `remove` drops every value of a repeated header.
    headers.remove(XFCC);
    let Some(peer_id) = peer_id else { return };
    let value = format!("By={};URI={}", quote(local_id), quote(peer_id));
    // SPIFFE IDs are visible ASCII, so the value is valid; if one ever is not, the app gets no
    // identity rather than a wrong one.
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(XFCC, value);
    }
}

/// Envoy quotes a value holding `,`, `;` or `=` (none of which a valid SPIFFE ID contains).
fn quote(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', ';', '=', '"']) {
        std::borrow::Cow::Owned(format!("\"{}\"", value.replace('"', "\\\"")))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "spiffe://bank.example/ns/ledger/sa/ledger";
    const PEER: &str = "spiffe://bank.example/ns/web/sa/frontend";

    #[test]
    fn spoofed_copies_are_replaced_by_the_proxys_own() {
        let mut headers = HeaderMap::new();
        headers.append(
            XFCC,
            HeaderValue::from_static("By=x;URI=spiffe://bank.example/ns/admin/sa/root"),
        );
        headers.append(
            "X-Forwarded-Client-Cert",
            HeaderValue::from_static("URI=spiffe://evil"),
        );
        set_xfcc(&mut headers, LOCAL, Some(PEER));
        let values: Vec<_> = headers.get_all(XFCC).iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0], &format!("By={LOCAL};URI={PEER}"));
    }

    #[test]
    fn without_a_verified_peer_the_header_is_only_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(XFCC, HeaderValue::from_static("URI=spiffe://evil"));
        set_xfcc(&mut headers, LOCAL, None);
        assert!(headers.get(XFCC).is_none());
    }

    #[test]
    fn separators_are_quoted() {
        assert_eq!(quote("a;b"), "\"a;b\"");
        assert_eq!(quote(PEER), PEER);
    }
}
