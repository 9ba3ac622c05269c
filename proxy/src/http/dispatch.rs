//! Sending one request to an upstream with several endpoints: pick one (see [`crate::balance`]),
//! send, and on a transport failure retry on another endpoint when that is safe and the budget
//! allows. Safe means the request can be sent again exactly (its body, if any, was small enough
//! to keep) and either it never reached the endpoint (no connection) or its method is idempotent.
//! A 5xx answer is an answer: it is passed on, not retried (the app may have acted on it).
//!
//! The whole exchange, retries included, runs under the route's request timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::body::{BoxError, ProxyBody, boxed};
use super::pool::UpstreamError;
use crate::access_log::ConnectionRecord;
use crate::balance::{Endpoint, Upstream};

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// Every endpoint was tried (or none is known yet).
    #[error("no upstream endpoint is available: {0}")]
    NoEndpoint(String),
    /// The last attempt failed and no retry was allowed.
    #[error("{error}{}", retry_note(*.attempts, why_not))]
    Upstream {
        /// The last attempt's failure.
        #[source]
        error: UpstreamError,
        /// Attempts made.
        attempts: u32,
        /// Why it was not retried.
        why_not: &'static str,
    },
    /// No response within the request timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The client's request body failed while it was being read to keep for a retry.
    #[error("reading the request body failed: {0}")]
    Body(#[source] BoxError),
}

fn retry_note(attempts: u32, why_not: &'static str) -> String {
    if why_not.is_empty() {
        String::new()
    } else {
        format!(" (attempt {attempts}; not retried: {why_not})")
    }
}

/// A response, the endpoint that gave it (or failed last) and the attempts made.
#[derive(Debug)]
pub struct Dispatched {
    /// The response, or why there is none.
    pub result: Result<Response<Incoming>, DispatchError>,
    /// The last endpoint tried, as text.
    pub endpoint: Option<Arc<str>>,
    /// Attempts made.
    pub attempts: u32,
}

impl Dispatched {
    /// Writes the endpoint and the attempts on the request's line. The connection's record
    /// usually names the endpoint already; the text is only copied when it differs.
    pub fn record(&self, line: &mut ConnectionRecord) {
        line.attempts = Some(self.attempts);
        if let Some(endpoint) = &self.endpoint
            && line.upstream.as_deref() != Some(&**endpoint)
        {
            line.upstream = Some(endpoint.to_string());
        }
    }
}

/// Sends `request` to an endpoint of `upstream` with `send`, retrying as the module says.
pub async fn dispatch<C, F, Fut>(
    upstream: &Upstream<C>,
    request: Request<ProxyBody>,
    timeout: Duration,
    send: F,
) -> Dispatched
where
    F: Fn(Arc<Endpoint<C>>, Request<ProxyBody>) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, UpstreamError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Dispatched {
        result: Err(DispatchError::NoEndpoint("none resolved".to_owned())),
        endpoint: None,
        attempts: 0,
    };
    upstream.deposit();
    let config = upstream.config();
    let idempotent = is_idempotent(request.method());
    // Keeping the request costs a header copy per attempt; only pay it where another endpoint
    // could take the retry.
    let may_retry = config.max_attempts > 1 && upstream.len() > 1;
    let mut pending = Some(request);
    let mut replay: Option<Replay> = None;
    if may_retry && let Some(request) = pending.take() {
        match tokio::time::timeout_at(deadline, Replay::keep(request, config.retry_buffer_bytes))
            .await
        {
            Err(_) => {
                out.result = Err(DispatchError::TimedOut(timeout));
                return out;
            }
            Ok(Err(error)) => {
                out.result = Err(DispatchError::Body(error));
                return out;
            }
            Ok(Ok(Kept::Replayable(kept))) => replay = Some(kept),
            Ok(Ok(Kept::Streaming(request))) => pending = Some(request),
        }
    }
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let request = match (&replay, pending.take()) {
            (_, Some(request)) => request,
            (Some(replay), None) => replay.request(),
            (None, None) => return out,
        };
        let Some(endpoint) = upstream.pick(&tried) else {
            if out.attempts == 0 {
                out.result = Err(DispatchError::NoEndpoint("none resolved".to_owned()));
            }
            return out;
        };
        // Without a retry, nothing asks what was tried: no allocation on the single-endpoint path.
        if may_retry {
            tried.push(endpoint.addr);
        }
        out.attempts += 1;
        out.endpoint = Some(endpoint.label.clone());
        let attempt = endpoint.track(send(endpoint.clone(), request));
        let error = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(response)) => {
                endpoint.succeeded();
                out.result = Ok(response);
                return out;
            }
            Err(_) => {
                endpoint.failed(Instant::now(), "no answer within the request timeout");
                out.result = Err(DispatchError::TimedOut(timeout));
                return out;
            }
            Ok(Err(error)) => error,
        };
        endpoint.failed(Instant::now(), &error.to_string());
        let why_not = if replay.is_none() {
            if may_retry {
                "the request body was streamed"
            } else {
                ""
            }
        } else if !error.before_sent() && !idempotent {
            "the request may have reached the upstream and its method is not idempotent"
        } else if out.attempts >= config.max_attempts {
            "max_attempts reached"
        } else if !upstream.withdraw() {
            "the retry budget is spent"
        } else {
            tracing::debug!(listener = upstream.listener(), endpoint = %endpoint.addr, %error, "retrying on another endpoint");
            continue;
        };
        out.result = Err(DispatchError::Upstream {
            error,
            attempts: out.attempts,
            why_not,
        });
        return out;
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

enum Kept {
    Replayable(Replay),
    Streaming(Request<ProxyBody>),
}

/// A request that can be built again: its head and its whole (small) body.
struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// Keeps `request` when its body is empty or declared (Content-Length) within `limit`;
    /// otherwise hands it back to be streamed once.
    async fn keep(request: Request<ProxyBody>, limit: usize) -> Result<Kept, BoxError> {
        let (parts, body) = request.into_parts();
        let hint = body.size_hint();
        let small = body.is_end_stream() || hint.upper().is_some_and(|n| n <= limit as u64);
        if !small {
            return Ok(Kept::Streaming(Request::from_parts(parts, body)));
        }
        let (body, trailers) = collect_within(body, limit).await?;
        Ok(Kept::Replayable(Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
            trailers,
        }))
    }

    fn request(&self) -> Request<ProxyBody> {
        let mut request = Request::new(boxed(ReplayBody {
            data: (!self.body.is_empty()).then(|| self.body.clone()),
            trailers: self.trailers.clone(),
        }));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Reads a body whose declared size is within `limit`; a body that sends more than it declared
/// is refused rather than kept without bound. (Frame by frame: `http_body_util::Limited`'s error
/// conversion trips rustc's higher-ranked `Send` check where the request future is spawned.)
async fn collect_within(
    mut body: ProxyBody,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit {
                    return Err("the request body is longer than its Content-Length".into());
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// A kept body: its data in one frame, then its trailers.
struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
