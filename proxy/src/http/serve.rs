//! Serving one connection with hyper (HTTP/1.1 or HTTP/2, chosen by the client's first bytes),
//! with the listener's limits, an idle timeout that only runs while no request is in flight, and
//! a graceful stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::body::ProxyBody;
use super::exchange::{InFlight, Reporting};
use super::settings::HttpSettings;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The client closed it (or asked to).
    Closed,
    /// No request for the idle timeout.
    Idle,
    /// The proxy is stopping.
    Stopped,
    /// A protocol error: malformed request, oversized headers, timeouts, HTTP/2 abuse; with
    /// its metric label.
    Error {
        /// `bad_request`, `header_too_large`, `header_timeout`, `h2_abuse`, `h2_protocol` or `io`.
        label: &'static str,
        /// The error in words.
        message: String,
    },
}

/// Serves `io` until the connection ends.
pub async fn serve_connection<I, S>(
    io: I,
    settings: &HttpSettings,
    service: S,
    in_flight: Arc<InFlight>,
    reporting: &Reporting,
    stop: CancellationToken,
) -> ServeOutcome
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = settings.server_builder();
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = settings.idle_timeout;
    let mut stopping = None;
    let mut last_activity = in_flight.activity.load(Ordering::Acquire);
    let mut ticker = tokio::time::interval(idle);
    ticker.tick().await;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                return match (result, stopping) {
                    (_, Some(outcome)) => outcome,
                    (Ok(()), None) => ServeOutcome::Closed,
                    (Err(error), None) => {
                        let label = classify(&*error);
                        let message = describe(&*error);
                        reporting.metrics.refused(&reporting.listener, label);
                        tracing::info!(listener = %reporting.listener, error = %message, kind = label, "HTTP connection closed on a protocol error");
                        ServeOutcome::Error { label, message }
                    }
                };
            }
            () = stop.cancelled(), if stopping.is_none() => {
                connection.as_mut().graceful_shutdown();
                stopping = Some(ServeOutcome::Stopped);
            }
            _ = ticker.tick(), if stopping.is_none() => {
                let activity = in_flight.activity.load(Ordering::Acquire);
                if activity == last_activity && in_flight.count() == 0 {
                    connection.as_mut().graceful_shutdown();
                    stopping = Some(ServeOutcome::Idle);
                }
                last_activity = activity;
            }
        }
    }
}

/// The metric label of a connection error.
fn classify(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => "h2_abuse",
                _ if h2.is_io() => "io",
                _ => "h2_protocol",
            };
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_parse_too_large() {
                return "header_too_large";
            }
            if hyper.is_timeout() {
                return "header_timeout";
            }
            if hyper.is_parse() || hyper.is_parse_status() {
                return "bad_request";
            }
        }
        if e.downcast_ref::<std::io::Error>().is_some() {
            return "io";
        }
        current = e.source();
    }
    "other"
}

/// The error and its causes in one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
