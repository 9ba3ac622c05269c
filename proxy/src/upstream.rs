//! Connections the proxy opens: plain TCP to an app or legacy host, and mTLS to a peer sidecar
//! whose SPIFFE ID must be one of the expected ones.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::access_log::ErrorClass;
use crate::balance::Upstream;
use crate::config::Target;
use crate::listener::Connection;
use crate::tls_error;

/// Connects to `target` within `timeout`, with TCP_NODELAY.
pub async fn connect(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((target.host(), target.port())))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {target} timed out after {timeout:?}"),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The L4 form of an upstream: endpoints are dialed per connection, nothing else per endpoint.
pub type L4Upstream = Upstream<()>;

/// Connects to an endpoint of `upstream`, trying the next one (by the balancer) when a connect
/// fails, as many times as `max_attempts` allows. Returns the stream and the endpoint's
/// configured name (its host names the server for SNI); the record gets the endpoint and the
/// attempt count either way.
pub async fn connect_any(
    conn: &mut Connection,
    upstream: &L4Upstream,
    timeout: Duration,
) -> Option<(TcpStream, Target)> {
    let mut tried = Vec::new();
    let mut last = String::from("no upstream endpoint is resolved");
    while tried.len() < upstream.config().max_attempts as usize {
        let Some(endpoint) = upstream.pick(&tried) else {
            break;
        };
        tried.push(endpoint.addr);
        conn.record.upstream = Some(endpoint.addr.to_string());
        conn.record.attempts = Some(tried.len() as u32);
        let target = Target::from_addr(endpoint.addr);
        match endpoint.track(connect(&target, timeout)).await {
            Ok(tcp) => {
                endpoint.succeeded();
                return Some((tcp, endpoint.name.clone()));
            }
            Err(error) => {
                last = format!("cannot connect to {}: {error}", endpoint.addr);
                endpoint.failed(Instant::now(), &last);
            }
        }
    }
    if tried.len() > 1 {
        last = format!("{last} (after trying {} endpoints)", tried.len());
    }
    conn.record.fail(ErrorClass::Upstream, last);
    None
}

/// Connects to an endpoint of `upstream` and completes mTLS as a client; on failure the record says why, naming
/// the expected and presented identities when the server was not the one expected.
pub async fn originate(
    conn: &mut Connection,
    upstream: &L4Upstream,
    sni: Option<&str>,
    client: &Arc<ClientConfig>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    expected: &str,
) -> Option<TlsStream<TcpStream>> {
    let (tcp, target) = connect_any(conn, upstream, connect_timeout).await?;
    handshake(conn, tcp, &target, sni, client, handshake_timeout, expected).await
}

/// Connects to one `target` (a transparent route's destination) and completes mTLS as a client.
pub async fn originate_to(
    conn: &mut Connection,
    target: &Target,
    sni: Option<&str>,
    client: &Arc<ClientConfig>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    expected: &str,
) -> Option<TlsStream<TcpStream>> {
    conn.record.upstream = Some(target.to_string());
    let tcp = match connect(target, connect_timeout).await {
        Ok(tcp) => tcp,
        Err(error) => {
            conn.record.fail(
                ErrorClass::Upstream,
                format!("cannot connect to {target}: {error}"),
            );
            return None;
        }
    };
    handshake(conn, tcp, target, sni, client, handshake_timeout, expected).await
}

/// The client side of mTLS over `tcp`, to the server named `sni` or `target`'s host.
async fn handshake(
    conn: &mut Connection,
    tcp: TcpStream,
    target: &Target,
    sni: Option<&str>,
    client: &Arc<ClientConfig>,
    handshake_timeout: Duration,
    expected: &str,
) -> Option<TlsStream<TcpStream>> {
    let name = sni.unwrap_or(target.host());
    let server_name = match ServerName::try_from(name.to_owned()) {
        Ok(server_name) => server_name,
        Err(_) => {
            conn.record.fail(
                ErrorClass::Internal,
                format!("`{name}` is not a valid TLS server name; set `sni`"),
            );
            return None;
        }
    };
    if sni.is_some() {
        conn.record.sni = Some(name.to_owned());
    }
    let started = Instant::now();
    let handshake = TlsConnector::from(client.clone()).connect(server_name, tcp);
    let result = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        )),
    };
    match result {
        Ok(tls) => {
            conn.metrics
                .handshake_seconds
                .observe(started.elapsed().as_secs_f64());
            let (_, session) = tls.get_ref();
            conn.record.peer_id = meshguard_identity::peer_spiffe_id(session)
                .ok()
                .map(|id| id.to_string());
            let info = meshguard_identity::tls_info(session);
            conn.record.tls_version = info.version;
            conn.record.cipher_suite = info.cipher_suite;
            conn.record.kx_group = info.kx_group;
            conn.record.alpn = info.alpn;
            Some(tls)
        }
        Err(error) => {
            let failure = tls_error::classify(&error);
            conn.metrics.handshake_failed(failure.label);
            conn.record.peer_id = failure.presented.clone();
            let reason = if failure.label == "unexpected_identity" {
                failure.reason
            } else {
                format!(
                    "mTLS to {target} (expecting {expected}) failed: {}",
                    failure.reason
                )
            };
            tracing::warn!(listener = %conn.record.listener, upstream = %target, reason = %reason, "outbound mTLS refused");
            conn.record.fail(ErrorClass::Upstream, reason);
            None
        }
    }
}

/// Completes server-side TLS for a legacy client of an outbound listener; on failure the record
/// says why (the client is on the downstream side).
pub async fn accept_legacy(
    conn: &mut Connection,
    server: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    handshake_timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let started = Instant::now();
    let result = match tokio::time::timeout(
        handshake_timeout,
        tokio_rustls::TlsAcceptor::from(server).accept(tcp),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        )),
    };
    match result {
        Ok(tls) => {
            conn.metrics
                .handshake_seconds
                .observe(started.elapsed().as_secs_f64());
            conn.record.sni = tls.get_ref().1.server_name().map(str::to_owned);
            Some(tls)
        }
        Err(error) => {
            let failure = tls_error::classify(&error);
            conn.metrics.handshake_failed(failure.label);
            let reason = format!("TLS from the legacy client failed: {}", failure.reason);
            tracing::info!(listener = %conn.record.listener, source = %conn.record.source_addr, %reason, "legacy client TLS refused");
            conn.record.fail(ErrorClass::Downstream, reason);
            None
        }
    }
}

/// Records a failed TLS handshake towards a gateway's legacy host and closes the mesh side.
pub async fn legacy_tls_failed<S>(
    mut conn: Connection,
    target: &Target,
    error: &io::Error,
    mut mesh: S,
) -> Connection
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let failure = tls_error::classify(error);
    let reason = format!("TLS to the legacy host {target} failed: {}", failure.reason);
    tracing::warn!(listener = %conn.record.listener, upstream = %target, %reason, "legacy host TLS refused");
    conn.record.fail(ErrorClass::Upstream, reason);
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut mesh).await;
    conn
}
