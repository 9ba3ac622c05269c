//! One request's bookkeeping, shared by the inbound and outbound HTTP proxies: the access-log
//! line being filled in, the byte counters, and the final step (metrics and the log line) that
//! runs when the response body ends or is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::{Counted, ProxyBody, boxed};
use super::dispatch::{DispatchError, Dispatched};
use super::metrics::HttpMetrics;
use super::orig_proto::strip_connection_headers;
use super::record::{HttpFields, version_name};
use super::request_id::{ensure_request_id, trace_id};
use super::respond::{Detail, bad_request, upstream_failed};
use crate::access_log::{AccessLog, ConnectionRecord, ErrorClass, Outcome};

/// What every request on one listener reports to.
#[derive(Debug, Clone)]
pub struct Reporting {
    /// The listener's name (metric label).
    pub listener: Arc<str>,
    /// Where request lines go.
    pub access_log: AccessLog,
    /// The HTTP metric families.
    pub metrics: HttpMetrics,
}

/// Requests of one connection still in flight (the idle timeout only runs when there are none).
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Bumped on every request start and end; the idle watchdog reads it.
    pub activity: AtomicU64,
}

impl InFlight {
    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One request in progress.
#[derive(Debug)]
pub struct Exchange {
    /// The access-log line: the connection's L4 fields, the decision, and `http`.
    pub line: ConnectionRecord,
    /// The L7 fields.
    pub fields: HttpFields,
    /// When the request arrived.
    pub started: Instant,
    /// When the request was handed to the upstream.
    pub forwarded: Option<Instant>,
    /// The decision label for metrics (`allow`, `deny`, `audit`, `refused`).
    pub decision: &'static str,
    request_bytes: Arc<AtomicU64>,
    reporting: Reporting,
    in_flight: Arc<InFlight>,
    /// Set once the line is handed to the response body (or written).
    handed_over: bool,
}

impl Exchange {
    /// Starts the bookkeeping of `request`: ensures its `x-request-id` and reads the fields known
    /// from its head. `template` is the connection's record.
    pub fn start<B>(
        request: &mut Request<B>,
        template: &ConnectionRecord,
        reporting: &Reporting,
        in_flight: &Arc<InFlight>,
    ) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        in_flight.activity.fetch_add(1, Ordering::AcqRel);
        let request_id = ensure_request_id(request.headers_mut());
        let headers = request.headers();
        let fields = HttpFields {
            method: request.method().clone(),
            authority: request
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                }),
            path: request.uri().path().to_owned(),
            version: version_name(request.version()),
            request_id,
            trace_id: trace_id(headers).map(str::to_owned),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            ..HttpFields::default()
        };
        let mut line = template.clone();
        line.start_time = jiff::Timestamp::now();
        Self {
            line,
            fields,
            started: Instant::now(),
            forwarded: None,
            decision: "refused",
            request_bytes: Arc::default(),
            reporting: reporting.clone(),
            in_flight: in_flight.clone(),
            handed_over: false,
        }
    }

    /// The request with its body counted.
    pub fn count_request(&self, request: Request<Incoming>) -> Request<ProxyBody> {
        let bytes = self.request_bytes.clone();
        request.map(|body| boxed(Counted::new(body, bytes, None)))
    }

    /// Sets the decision label from the record's outcome.
    pub fn set_decision(&mut self) {
        self.decision = match self.line.decision {
            Some(Outcome::Allow) => "allow",
            Some(Outcome::Audit) => "audit",
            Some(Outcome::Deny) => "deny",
            None => "refused",
        };
    }

    /// Ends a request the proxy cannot read unambiguously: 400 (as gRPC when `grpc`) with
    /// `reason`, counted as refused under `kind`.
    pub fn refuse(mut self, grpc: bool, kind: &'static str, reason: &str) -> Response<ProxyBody> {
        self.reporting
            .metrics
            .refused(&self.reporting.listener, kind);
        let response = bad_request(grpc, &self.fields.request_id, reason);
        self.line.fail(ErrorClass::Downstream, reason.to_owned());
        self.finish(response)
    }

    /// Ends the request as an upstream failure: the log line gets `reason` with the upstream
    /// error class, and the client gets 502 (or 504 when `timed_out`), as gRPC when `grpc`.
    pub fn fail_upstream(
        mut self,
        grpc: bool,
        timed_out: bool,
        reason: String,
        detail: Detail,
    ) -> Response<ProxyBody> {
        let response = upstream_failed(grpc, timed_out, &self.fields.request_id, &reason, detail);
        self.line.fail(ErrorClass::Upstream, reason);
        self.finish(response)
    }

    /// Answers the client with what dispatching the request gave: the response (its
    /// connection-specific headers stripped), 400 when the client's body broke while it was read,
    /// 504 or 502 naming `upstream` (e.g. "the app") and the endpoint tried. The endpoint and the
    /// attempts go on the log line first; `on_failure(endpoint, reason)` sees a failure that is
    /// not a timeout before the client does.
    pub fn answer(
        mut self,
        dispatched: Dispatched,
        grpc: bool,
        detail: Detail,
        upstream: &str,
        on_failure: impl FnOnce(&str, &str),
    ) -> Response<ProxyBody> {
        dispatched.record(&mut self.line);
        let error = match dispatched.result {
            Ok(mut response) => {
                strip_connection_headers(response.headers_mut());
                return self.finish(response);
            }
            Err(DispatchError::Body(error)) => {
                let reason = format!("reading the request body failed: {error}");
                return self.refuse(grpc, "bad_body", &reason);
            }
            Err(error) => error,
        };
        let endpoint = self.line.upstream.as_deref().unwrap_or_default();
        let timed_out = matches!(error, DispatchError::TimedOut(_));
        let reason = if timed_out {
            format!("{upstream} at {endpoint} did not answer: {error}")
        } else {
            let reason = format!("{upstream} at {endpoint} failed: {error}");
            on_failure(endpoint, &reason);
            reason
        };
        self.fail_upstream(grpc, timed_out, reason, detail)
    }

    /// Wraps the response so that the log line is written and the metrics counted when its body
    /// ends (or the client goes away).
    pub fn finish<B>(mut self, response: Response<B>) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<super::body::BoxError>,
    {
        self.fields.status = response.status().as_u16();
        self.fields.grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(forwarded) = self.forwarded {
            self.fields.upstream_ms = Some(forwarded.elapsed().as_secs_f64() * 1000.0);
        }
        let response_bytes = Arc::new(AtomicU64::new(0));
        let counted = response_bytes.clone();
        let owned = self.hand_over();
        let on_end: Box<dyn FnOnce() + Send> =
            Box::new(move || owned.report(counted.load(Ordering::Relaxed)));
        response.map(|body| boxed(Counted::new(body, response_bytes, Some(on_end))))
    }

    /// Moves the state into a new `Exchange` (that one reports; this one, dropped, does not).
    fn hand_over(&mut self) -> Self {
        self.handed_over = true;
        let placeholder = self.line.placeholder();
        Self {
            line: std::mem::replace(&mut self.line, placeholder),
            fields: std::mem::take(&mut self.fields),
            started: self.started,
            forwarded: self.forwarded,
            decision: self.decision,
            request_bytes: self.request_bytes.clone(),
            reporting: self.reporting.clone(),
            in_flight: self.in_flight.clone(),
            handed_over: false,
        }
    }

    fn report(mut self, response_bytes: u64) {
        self.handed_over = true;
        let seconds = self.started.elapsed().as_secs_f64();
        self.fields.response_bytes = response_bytes;
        self.fields.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        self.fields.duration_ms = seconds * 1000.0;
        self.line.duration_ms = seconds * 1000.0;
        self.line.bytes_in = self.fields.request_bytes;
        self.line.bytes_out = response_bytes;
        self.reporting.metrics.request(
            &self.reporting.listener,
            self.fields.status,
            self.decision,
            seconds,
        );
        self.line.http = Some(Box::new(std::mem::take(&mut self.fields)));
        let placeholder = self.line.placeholder();
        self.reporting
            .access_log
            .record(std::mem::replace(&mut self.line, placeholder));
        self.in_flight.count.fetch_sub(1, Ordering::AcqRel);
        self.in_flight.activity.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Exchange {
    /// A request abandoned before its response (the client reset the stream or closed the
    /// connection while the upstream was working) is still logged, with status 0.
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        if let Some(forwarded) = self.forwarded {
            self.fields.upstream_ms = Some(forwarded.elapsed().as_secs_f64() * 1000.0);
        }
        if self.line.reason.is_none() || self.line.error_class.is_none() {
            self.line.fail(
                crate::access_log::ErrorClass::Downstream,
                "the client abandoned the request before the response",
            );
        }
        let owned = self.hand_over();
        owned.report(0);
    }
}
