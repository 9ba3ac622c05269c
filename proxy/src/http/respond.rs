//! The responses the proxy writes itself: a denial (403, or gRPC `PERMISSION_DENIED`), a refused
//! request (400), and an upstream failure (502/504). Each names the request id, so a caller can
//! quote it to an operator who finds the reason in the access log; the reason itself is shown
//! unless the listener hides it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use super::request_id::X_REQUEST_ID;

/// Whether denial reasons are shown to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// The reason appears in the body (or `grpc-message`).
    Show,
    /// Only the request id appears; the reason stays in the access log. The zero-trust default:
    /// a caller learns that it was denied, not which rule to dodge.
    #[default]
    Hide,
}

/// gRPC status code 7.
pub const GRPC_PERMISSION_DENIED: u8 = 7;
/// gRPC status code 14, used when the upstream cannot be reached.
pub const GRPC_UNAVAILABLE: u8 = 14;
/// gRPC status code 3, for a request the proxy refuses as malformed.
pub const GRPC_INVALID_ARGUMENT: u8 = 3;
/// gRPC status code 4.
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;

/// Whether a request is gRPC (its content type is `application/grpc` or `application/grpc+...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// The response to a request the policy denied.
pub fn denied(grpc: bool, request_id: &str, reason: &str, detail: Detail) -> Response<Full<Bytes>> {
    let text = match detail {
        Detail::Show => format!("request {request_id} denied by policy: {reason}"),
        Detail::Hide => format!("request {request_id} denied by policy"),
    };
    if grpc {
        grpc_error(GRPC_PERMISSION_DENIED, &text, request_id)
    } else {
        plain(StatusCode::FORBIDDEN, &text, request_id)
    }
}

/// The response to a request the proxy refuses before policy (malformed path and the like).
pub fn bad_request(grpc: bool, request_id: &str, reason: &str) -> Response<Full<Bytes>> {
    let text = format!("request {request_id} refused: {reason}");
    if grpc {
        grpc_error(GRPC_INVALID_ARGUMENT, &text, request_id)
    } else {
        plain(StatusCode::BAD_REQUEST, &text, request_id)
    }
}

/// The response when the upstream could not be reached (`502`) or did not answer in time (`504`).
pub fn upstream_failed(
    grpc: bool,
    timed_out: bool,
    request_id: &str,
    reason: &str,
    detail: Detail,
) -> Response<Full<Bytes>> {
    let text = match detail {
        Detail::Show => format!("request {request_id} failed upstream: {reason}"),
        Detail::Hide => format!("request {request_id} failed upstream"),
    };
    match (grpc, timed_out) {
        (true, true) => grpc_error(GRPC_DEADLINE_EXCEEDED, &text, request_id),
        (true, false) => grpc_error(GRPC_UNAVAILABLE, &text, request_id),
        (false, true) => plain(StatusCode::GATEWAY_TIMEOUT, &text, request_id),
        (false, false) => plain(StatusCode::BAD_GATEWAY, &text, request_id),
    }
}

/// A short plain-text response.
pub fn plain(status: StatusCode, text: &str, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    response
}

/// A gRPC trailers-only response: HTTP 200 with `grpc-status` and `grpc-message` in the one
/// HEADERS frame and no body (gRPC over HTTP/2 spec, "Trailers-Only").
pub fn grpc_error(code: u8, message: &str, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    response
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`, are escaped.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http_denial_names_the_request_and_reason_unless_hidden() {
        let r = denied(false, "rid-1", "no allow policy matched", Detail::Show);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[X_REQUEST_ID], "rid-1");
        assert_eq!(
            body(r).await,
            "request rid-1 denied by policy: no allow policy matched\n"
        );
        let r = denied(false, "rid-1", "secret rule name", Detail::Hide);
        assert!(!body(r).await.contains("secret"));
    }

    #[tokio::test]
    async fn grpc_denial_is_trailers_only_permission_denied() {
        let r = denied(true, "rid-2", "100% no", Detail::Show);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "request rid-2 denied by policy: 100%25 no"
        );
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert!(body(r).await.is_empty());
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for ct in ["application/grpc", "application/grpc+proto"] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert!(is_grpc(&h), "{ct}");
        }
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!is_grpc(&h));
    }

    #[test]
    fn upstream_failures() {
        assert_eq!(
            upstream_failed(false, false, "r", "refused", Detail::Show).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            upstream_failed(false, true, "r", "slow", Detail::Show).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            upstream_failed(true, false, "r", "x", Detail::Show).headers()["grpc-status"],
            "14"
        );
        assert_eq!(
            bad_request(false, "r", "x").status(),
            StatusCode::BAD_REQUEST
        );
    }
}
