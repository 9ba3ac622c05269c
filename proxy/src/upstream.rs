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

/// Connects to `target` and completes mTLS as a client; on failure the record says why, naming
/// the expected and presented identities when the server was not the one expected.
pub async fn originate(
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
