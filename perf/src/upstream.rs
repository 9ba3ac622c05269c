//! The built-in fast upstream: one port serving HTTP/1.1, HTTP/2 (prior knowledge or ALPN) and TCP
//! echo, optionally behind mTLS. It is what `perf compare` puts behind every proxy, and what the
//! tests aim the generator at, so it must cost little and never be the bottleneck.
//!
//! HTTP and echo share the port by sniffing the first bytes: an HTTP request line starts with an
//! upper-case method token and a space (`GET /`, `PRI *` for the HTTP/2 preface); anything else is
//! echoed. A client of the echo service whose first bytes look like a request line would be
//! answered as HTTP, so the perf TCP modes send bytes that never do.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::connect::Io;

/// What the upstream speaks on one connection, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Echo,
}

/// Classifies the first bytes of a connection; `None` until there are enough to tell.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    // Longest registered method names are under 16 characters.
    const MAX_METHOD: usize = 16;
    for (i, &c) in first.iter().enumerate() {
        if c == b' ' {
            return Some(if i > 0 {
                Protocol::Http
            } else {
                Protocol::Echo
            });
        }
        if !(c.is_ascii_uppercase() || c == b'-') || i >= MAX_METHOD {
            return Some(Protocol::Echo);
        }
    }
    None
}

/// A bound upstream, ready to serve.
pub struct Upstream {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    body: Bytes,
    /// Added before every HTTP response: a slow replica, for balancing tests.
    delay: std::time::Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .field("response_bytes", &self.body.len())
            .field("delay", &self.delay)
            .finish()
    }
}

impl Upstream {
    /// Binds `addr` (use port 0 for any free port). `tls` makes every connection mTLS first.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        response_bytes: usize,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr}: is the port free?"))?;
        Ok(Upstream {
            listener,
            tls: tls.map(TlsAcceptor::from),
            body: Bytes::from(vec![b'x'; response_bytes]),
            delay: std::time::Duration::ZERO,
        })
    }

    /// Waits `delay` before every HTTP response (echo is not delayed).
    pub fn with_response_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped; each connection runs on its own task.
    pub async fn serve(self) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "upstream accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.clone();
            let (body, delay) = (self.body.clone(), self.delay);
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => Box::new(stream),
                        Err(error) => {
                            tracing::debug!(%peer, %error, "upstream TLS handshake failed");
                            return;
                        }
                    },
                };
                if let Err(error) = serve_connection(io, body, delay).await {
                    tracing::debug!(%peer, %error, "upstream connection ended with an error");
                }
            });
        }
    }
}

async fn serve_connection(
    mut io: Box<dyn Io>,
    body: Bytes,
    delay: std::time::Duration,
) -> io::Result<()> {
    let mut first = BytesMut::with_capacity(4096);
    let protocol = loop {
        if io.read_buf(&mut first).await? == 0 {
            return Ok(());
        }
        if let Some(protocol) = classify(&first) {
            break protocol;
        }
    };
    let io = Prefixed {
        prefix: first.freeze(),
        inner: io,
    };
    match protocol {
        Protocol::Echo => echo(io).await,
        Protocol::Http => {
            let service = service_fn(move |_request| {
                let body = body.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                }
            });
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
                .await
                .map_err(io::Error::other)
        }
    }
}

/// Echoes until the client stops writing, then closes our side so the client sees the end.
async fn echo(io: Prefixed) -> io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(io);
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}

/// A stream whose first bytes were already read while sniffing; they are read again first.
struct Prefixed {
    prefix: Bytes,
    inner: Box<dyn Io>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http_everything_else_echo() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Protocol::Http));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\0\0\0\0"), Some(Protocol::Echo));
        assert_eq!(classify(b"hello"), Some(Protocol::Echo));
        assert_eq!(classify(b" GET"), Some(Protocol::Echo));
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Protocol::Echo)
        );
    }
}
