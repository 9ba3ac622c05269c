//! The HTTP part of a request's access-log line. The line is the connection's record (the L4
//! fields: peer and local identity, addresses, TLS) with these fields under `http`.

use serde::Serialize;

/// One request's L7 fields.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpFields {
    /// Request method (standard methods are stored without an allocation).
    #[serde(serialize_with = "method_name")]
    pub method: http::Method,
    /// `:authority` or Host.
    pub authority: Option<String>,
    /// The normalized path the request was authorized on (as received when it was refused).
    pub path: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`, as the client spoke it.
    pub version: &'static str,
    /// Response status sent to the client (0 when none was sent).
    pub status: u16,
    /// `grpc-status` of a gRPC response, when known from its headers (trailers-only).
    pub grpc_status: Option<String>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// From the request's arrival to the end of the response body, milliseconds.
    pub duration_ms: f64,
    /// From forwarding to the upstream's response headers, milliseconds; absent when not forwarded.
    pub upstream_ms: Option<f64>,
    /// `x-request-id` (the client's or generated).
    pub request_id: String,
    /// The W3C trace id of `traceparent`.
    pub trace_id: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// All reasons of the decision (the connection-level `reason` field joins them).
    pub reasons: Vec<String>,
    /// Whether a break-glass grant allowed the request.
    pub break_glass: bool,
}

/// Writes a method as its name, e.g. `"GET"`.
fn method_name<S: serde::Serializer>(method: &http::Method, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(method.as_str())
}

/// The log name of an HTTP version.
pub fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_written_as_its_name() {
        for (method, name) in [
            (http::Method::GET, "GET"),
            (http::Method::from_bytes(b"PROPFIND").unwrap(), "PROPFIND"),
        ] {
            let fields = HttpFields {
                method,
                ..HttpFields::default()
            };
            let value = serde_json::to_value(&fields).unwrap();
            assert_eq!(value["method"], name);
        }
    }
}
