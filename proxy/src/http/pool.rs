//! Upstream connections: one multiplexed HTTP/2 connection per peer ([`H2Pool`]), re-established
//! when it closes, and a bounded pool of HTTP/1.1 connections to the app ([`Http1Client`]).
//!
//! Both dial a fixed address whatever the request's authority says: the authority is the
//! application's business (it reaches the app as `:authority` / Host), the destination is the
//! listener's config.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::body::ProxyBody;
use super::settings::HttpSettings;
use crate::config::Target;

/// Any byte stream an upstream connection runs over (TCP, or mTLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connect step.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Io>, String>> + Send>>;
/// How a pool opens a new connection; the error is a sentence for the log.
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn() -> ConnectFuture + Send + Sync>);

impl Connector {
    /// Wraps a connect function.
    pub fn new(connect: impl Fn() -> ConnectFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(connect))
    }

    /// Opens one connection.
    pub fn connect(&self) -> ConnectFuture {
        (self.0)()
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("{0}")]
    Connect(String),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with the upstream failed: {}", with_causes(.0))]
    Handshake(#[source] hyper::Error),
    /// The request failed on an open connection.
    #[error("the upstream failed the request: {}", with_causes(.0))]
    Request(#[source] hyper::Error),
    /// The HTTP/1.1 client failed.
    #[error("the upstream failed the request: {}", with_causes(.0))]
    Client(#[source] hyper_util::client::legacy::Error),
}

/// `error` and each of its causes, joined by `: `. hyper's own text is only the category
/// ("client error (Connect)", "connection closed before message completed"); the operator
/// reading the log or the 502 needs the cause under it ("Connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let line = next.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = next.source();
    }
    text
}

impl UpstreamError {
    /// Whether the request certainly never reached the upstream (no connection was made), so
    /// sending it elsewhere cannot make it happen twice.
    pub fn before_sent(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Handshake(_) => true,
            Self::Client(error) => error.is_connect(),
            Self::Request(_) => false,
        }
    }
}

/// One multiplexed HTTP/2 connection to one upstream, opened on first use and again after it
/// closes. Concurrent callers share it; while it is being opened, they wait for that one attempt.
#[derive(Clone)]
pub struct H2Pool {
    connect: Connector,
    current: Arc<Mutex<Option<http2::SendRequest<ProxyBody>>>>,
    settings: Arc<HttpSettings>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").finish_non_exhaustive()
    }
}

impl H2Pool {
    /// A pool that opens connections with `connect`.
    pub fn new(connect: Connector, settings: Arc<HttpSettings>) -> Self {
        Self {
            connect,
            current: Arc::default(),
            settings,
        }
    }

    /// Sends a request on the shared connection (opening it if needed).
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(UpstreamError::Request)?;
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)
    }

    async fn sender(&self) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let mut current = self.current.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let io = self
            .connect
            .connect()
            .await
            .map_err(UpstreamError::Connect)?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(self.settings.max_header_bytes)
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20))
            .adaptive_window(true);
        let (sender, connection) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }
}

/// Connects to `target` over plain TCP.
pub fn tcp_connector(target: Target, timeout: Duration) -> Connector {
    Connector::new(move || {
        let target = target.clone();
        Box::pin(async move {
            let tcp = crate::upstream::connect(&target, timeout)
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?;
            Ok(Box::new(tcp) as Box<dyn Io>)
        })
    })
}

/// A pooled HTTP/1.1 client to one fixed address.
pub type Http1Client = Client<FixedConnector, ProxyBody>;

/// Dials one address for every URI.
#[derive(Clone, Debug)]
pub struct FixedConnector {
    target: Target,
    timeout: Duration,
}

impl tower::Service<http::Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (target, timeout) = (self.target.clone(), self.timeout);
        Box::pin(async move {
            crate::upstream::connect(&target, timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

/// An HTTP/1.1 client with a bounded idle pool, dialing `target` whatever the URI.
pub fn http1_client(
    target: Target,
    connect_timeout: Duration,
    settings: &HttpSettings,
) -> Http1Client {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(settings.pool_max_idle)
        .pool_idle_timeout(settings.pool_idle_timeout)
        .set_host(true)
        .build(FixedConnector {
            target,
            timeout: connect_timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_cause_under_hypers_category_is_spelled_out() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = with_causes(&Outer(Inner(refused)));
        assert_eq!(
            text,
            "client error (Connect): tcp connect error: connection refused"
        );
    }
}
