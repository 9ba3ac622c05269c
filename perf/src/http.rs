//! `meshguard perf http`: GET requests on kept-alive HTTP/1.1 or HTTP/2 connections, one connection
//! per worker, each managed here (hyper's low-level client) so that the connection count is exactly
//! what was asked for and no pool hides a reconnect.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::connect::{Connected, Connector, Handshake};
use crate::engine::Exchange;
use crate::recorder::ErrorKind;
use crate::tls::TlsFiles;

/// HTTP version spoken on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// Prior knowledge on plaintext, ALPN `h2` over TLS.
    Http2,
}

/// Where requests go and how; shared by all workers.
#[derive(Debug)]
pub struct HttpTarget {
    connector: Connector,
    version: HttpVersion,
    /// Absolute URI (`http://host:port/path`): HTTP/2 needs scheme and authority.
    uri: Uri,
    /// The origin-form path for HTTP/1.1.
    path: Uri,
    host: HeaderValue,
}

impl HttpTarget {
    /// Parses `url` (`http://` or `https://`) and prepares TLS for `https`.
    pub async fn new(url: &str, version: HttpVersion, tls: &TlsFiles) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| {
            format!("--target {url:?} is not a URL such as http://127.0.0.1:8080/")
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("--target {url:?} must start with http:// or https://"),
        };
        let authority = uri
            .authority()
            .with_context(|| format!("--target {url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls_config = match (https, tls.wants_tls()) {
            (false, false) => None,
            (false, true) => anyhow::bail!(
                "--cert/--key/--bundle/--expect-id were given but --target {url:?} is http://; use https:// for TLS"
            ),
            (true, _) => {
                let alpn: &[&[u8]] = match version {
                    HttpVersion::Http1 => &[b"http/1.1"],
                    HttpVersion::Http2 => &[b"h2"],
                };
                Some(tls.client_config(alpn, true)?)
            }
        };
        let connector = Connector::new(authority.host(), port, tls_config).await?;
        Self::with_connector(url, version, connector)
    }

    /// Requests to `url` over connections that `connector` opens (its TLS settings win).
    pub fn with_connector(
        url: &str,
        version: HttpVersion,
        connector: Connector,
    ) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL such as http://127.0.0.1:8080/"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?
            .clone();
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .context("the URL's path is not valid")?;
        let host =
            HeaderValue::from_str(authority.as_str()).context("the URL's host is not valid")?;
        Ok(HttpTarget {
            connector,
            version,
            uri,
            path,
            host,
        })
    }

    /// Opens a connection and sets up HTTP on it; hyper's connection task runs on its own.
    pub async fn open(&self) -> Result<(Sender, Handshake), ErrorKind> {
        let Connected { stream, handshake } = self.connector.connect().await?;
        let io = TokioIo::new(stream);
        let sender = match self.version {
            HttpVersion::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(classify)?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "HTTP/1.1 connection ended");
                    }
                });
                Sender::Http1(sender)
            }
            HttpVersion::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(classify)?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "HTTP/2 connection ended");
                    }
                });
                Sender::Http2(sender)
            }
        };
        Ok((sender, handshake))
    }

    /// Sends one GET and reads the whole response; non-2xx statuses are errors by class.
    pub async fn request(&self, sender: &mut Sender, close: bool) -> Result<(), ErrorKind> {
        let response = match sender {
            Sender::Http1(s) => {
                let mut request = Request::get(self.path.clone())
                    .header(header::HOST, self.host.clone())
                    .body(Empty::<Bytes>::new())
                    .map_err(|_| ErrorKind::Protocol)?;
                if close {
                    request
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                s.ready().await.map_err(classify)?;
                s.send_request(request).await
            }
            Sender::Http2(s) => {
                let request = Request::get(self.uri.clone())
                    .version(http::Version::HTTP_2)
                    .body(Empty::<Bytes>::new())
                    .map_err(|_| ErrorKind::Protocol)?;
                s.ready().await.map_err(classify)?;
                s.send_request(request).await
            }
        }
        .map_err(classify)?;
        let status = response.status();
        response.into_body().collect().await.map_err(classify)?;
        match ErrorKind::from_status(status) {
            Some(kind) => Err(kind),
            None => Ok(()),
        }
    }
}

/// The request half of one HTTP connection.
#[derive(Debug)]
pub enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// Maps hyper's errors to report kinds.
fn classify(error: hyper::Error) -> ErrorKind {
    if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_parse() || error.is_user() {
        ErrorKind::Protocol
    } else {
        ErrorKind::Io
    }
}

/// One worker's kept-alive connection.
#[derive(Debug)]
pub struct HttpExchange {
    target: Arc<HttpTarget>,
    sender: Option<Sender>,
}

impl HttpExchange {
    /// A worker that connects lazily on its first request.
    pub fn new(target: Arc<HttpTarget>) -> Self {
        HttpExchange {
            target,
            sender: None,
        }
    }

    /// Connects now, so the run does not time connection setup into its first requests.
    pub async fn warm_up(&mut self) -> Result<(), ErrorKind> {
        if self.sender.is_none() {
            self.sender = Some(self.target.open().await?.0);
        }
        Ok(())
    }
}

impl Exchange for HttpExchange {
    async fn exchange(&mut self) -> Result<(), ErrorKind> {
        self.warm_up().await?;
        match &mut self.sender {
            Some(sender) => self.target.request(sender, false).await,
            None => Err(ErrorKind::Connect),
        }
    }

    fn reset(&mut self, cause: ErrorKind) {
        if cause.breaks_connection() {
            self.sender = None;
        }
    }
}
