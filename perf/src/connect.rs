//! Opening a connection to the target: TCP (no Nagle), then TLS when configured, timed, with the
//! failure classified for the report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::recorder::ErrorKind;

/// A byte stream to the target, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An open connection and what it took to open it.
pub struct Connected {
    pub stream: Box<dyn Io>,
    pub handshake: Handshake,
}

/// How a connection was opened.
#[derive(Debug, Clone, Copy)]
pub struct Handshake {
    /// TCP connect plus TLS handshake.
    pub took: Duration,
    /// Whether the TLS session was resumed (false for plaintext).
    pub resumed: bool,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// Knows where the target is and how to secure the connection. Shared by all workers.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// Resolves `host:port` once (a load test should not measure DNS) and keeps the TLS config.
    pub async fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((bare_host, port))
            .await
            .with_context(|| format!("could not resolve {host}:{port}"))?
            .next()
            .with_context(|| format!("{host}:{port} resolved to no address"))?;
        let tls = match tls {
            Some(config) => {
                // SPIFFE verification does not use the name; it only becomes SNI when it is a DNS name.
                let name = ServerName::try_from(bare_host.to_owned())
                    .with_context(|| format!("{host:?} is not a valid server name"))?;
                Some((TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Connector { addr, tls })
    }

    /// Splits `HOST:PORT` (IPv6 as `[::1]:PORT`) and builds a connector for it.
    pub async fn for_addr(target: &str, tls: Option<Arc<ClientConfig>>) -> anyhow::Result<Self> {
        let (host, port) = target.rsplit_once(':').with_context(|| {
            format!("target {target:?} has no port: write HOST:PORT, e.g. 127.0.0.1:8080")
        })?;
        let port = port
            .parse()
            .with_context(|| format!("target {target:?} has an invalid port"))?;
        Self::new(host, port, tls).await
    }

    /// The resolved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens one connection.
    pub async fn connect(&self) -> Result<Connected, ErrorKind> {
        let started = Instant::now();
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // Request-sized writes must leave at once; Nagle would add tens of ms to small messages.
        tcp.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        match &self.tls {
            None => Ok(Connected {
                stream: Box::new(tcp),
                handshake: Handshake {
                    took: started.elapsed(),
                    resumed: false,
                },
            }),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|error| {
                        tracing::debug!(%error, "TLS handshake failed");
                        ErrorKind::Tls
                    })?;
                let resumed = matches!(
                    tls.get_ref().1.handshake_kind(),
                    Some(rustls::HandshakeKind::Resumed)
                );
                Ok(Connected {
                    stream: Box::new(tls),
                    handshake: Handshake {
                        took: started.elapsed(),
                        resumed,
                    },
                })
            }
        }
    }
}
