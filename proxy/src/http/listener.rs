//! Protocol selection on the L4 listeners: `protocol = "http"` serves HTTP, `"detect"` picks
//! HTTP or opaque TCP per connection (by ALPN between sidecars, else by the first bytes).
//! Opaque connections take the L4 path: a connection-level decision, then a byte copy.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::inbound::{InboundHttp, PeerContext};
use super::outbound::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, OutboundHttp};
use super::serve::ServeOutcome;
use crate::access_log::ErrorClass;
use crate::authz::{self, ConnectionFacts};
use crate::config::Protocol;
use crate::copy::copy_bidirectional;
use crate::detect::{self, DetectConfig, Protocol as Detected};
use crate::inbound::Inbound;
use crate::listener::Connection;
use crate::outbound::Outbound;
use crate::upstream;

/// What the inbound side knows once the handshake is done.
#[derive(Debug)]
pub struct InboundFacts {
    /// The client's address.
    pub source: SocketAddr,
    /// The port the client dialed.
    pub port: u16,
    /// The peer's verified SPIFFE ID.
    pub peer_id: Option<String>,
    /// The SNI the client sent.
    pub sni: Option<String>,
}

/// Serves an inbound mTLS connection on an `http` or `detect` listener.
pub async fn inbound<S>(
    listener: &Inbound,
    http: &InboundHttp,
    detect_config: &DetectConfig,
    tls: S,
    facts: InboundFacts,
    conn: Connection,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let alpn = conn.record.alpn.clone().unwrap_or_default();
    let choice = match listener.config.protocol {
        Protocol::Http => Some(Detected::Http2),
        Protocol::Tcp => Some(Detected::Opaque),
        Protocol::Detect if alpn.as_bytes() == ALPN_H2 || alpn.as_bytes() == ALPN_HTTP1 => {
            Some(Detected::Http2)
        }
        Protocol::Detect if alpn.as_bytes() == ALPN_OPAQUE => Some(Detected::Opaque),
        Protocol::Detect => None,
    };
    let protocol = match choice {
        Some(protocol) => protocol,
        None => {
            let (detection, prefixed) =
                detect::sniff(tls, detect_config, facts.port, std::future::pending()).await;
            return match detection.protocol {
                Detected::Opaque => inbound_opaque(listener, prefixed, facts, conn).await,
                _ => inbound_http(listener, http, prefixed, facts, conn).await,
            };
        }
    };
    if protocol == Detected::Opaque {
        return inbound_opaque(listener, tls, facts, conn).await;
    }
    inbound_http(listener, http, tls, facts, conn).await
}

async fn inbound_http<S>(
    listener: &Inbound,
    http: &InboundHttp,
    io: S,
    facts: InboundFacts,
    mut conn: Connection,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    conn.record.upstream = Some(listener.config.upstream.first().to_string());
    let peer = PeerContext {
        peer_id: facts.peer_id,
        local_id: listener.shared.local_id(),
        source: facts.source,
        port: facts.port,
        sni: facts.sni,
        record: conn.record.clone(),
    };
    let outcome = http.serve(io, peer, listener.shared.drain.clone()).await;
    finish(&mut conn, outcome);
    conn
}

/// The L4 path for an opaque stream on a `detect` listener: connection-level decision, then copy.
async fn inbound_opaque<S>(
    listener: &Inbound,
    mut io: S,
    facts: InboundFacts,
    mut conn: Connection,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let decision = listener.authorizer.decide(ConnectionFacts {
        principal: facts.peer_id.as_deref(),
        source_ip: facts.source.ip(),
        port: facts.port,
        sni: facts.sni.as_deref(),
    });
    authz::record_decision(&mut conn.record, &decision);
    conn.metrics
        .decided(authz::policy_label(&decision), decision.outcome.as_str());
    if !decision.is_allowed() {
        conn.record.error_class = Some(ErrorClass::Policy);
        let _ = io.shutdown().await;
        return conn;
    }
    let Some((mut app, _)) = upstream::connect_any(
        &mut conn,
        &listener.upstream,
        listener.shared.timeouts.connect.get(),
    )
    .await
    else {
        return conn;
    };
    let outcome = copy_bidirectional(&mut io, &mut app, listener.shared.timeouts.idle.get()).await;
    conn.finish_copy(outcome);
    conn
}

/// Serves a plaintext connection from the app on an `http` or `detect` outbound listener.
pub async fn outbound(
    listener: &Outbound,
    http: &OutboundHttp,
    detect_config: &DetectConfig,
    app: TcpStream,
    mut conn: Connection,
) -> Connection {
    conn.record.original_dst = Some(listener.config.listen.to_string());
    conn.record.local_id = Some(listener.shared.local_id());
    let stop = listener.shared.drain.clone();
    if listener.config.protocol == Protocol::Http {
        conn.record.upstream = Some(listener.config.upstream.first().to_string());
        let outcome = http.serve(app, conn.record.clone(), stop).await;
        finish(&mut conn, outcome);
        return conn;
    }
    let port = app
        .local_addr()
        .map_or(listener.config.listen.port(), |a| a.port());
    let (detection, mut prefixed) =
        detect::sniff(app, detect_config, port, std::future::pending()).await;
    if detection.protocol != Detected::Opaque {
        conn.record.upstream = Some(listener.config.upstream.first().to_string());
        let outcome = http.serve(prefixed, conn.record.clone(), stop).await;
        finish(&mut conn, outcome);
        return conn;
    }
    let timeouts = listener.shared.timeouts;
    let Some(mut tls) = upstream::originate(
        &mut conn,
        &listener.upstream,
        listener.config.sni.as_deref(),
        &listener.client,
        timeouts.connect.get(),
        timeouts.handshake.get(),
        &listener.expected,
    )
    .await
    else {
        return conn;
    };
    conn.record.decision = Some(crate::access_log::Outcome::Allow);
    let outcome = copy_bidirectional(&mut prefixed, &mut tls, timeouts.idle.get()).await;
    conn.finish_copy(outcome);
    conn
}

/// The connection line of an HTTP connection: how it ended (its requests have lines of their own).
fn finish(conn: &mut Connection, outcome: ServeOutcome) {
    match outcome {
        ServeOutcome::Closed | ServeOutcome::Stopped => {}
        ServeOutcome::Idle => conn.record.reason = Some("closed after the idle timeout".to_owned()),
        ServeOutcome::Error { label, message } => {
            conn.record.fail(
                ErrorClass::Downstream,
                format!("HTTP protocol error ({label}): {message}"),
            );
        }
    }
}
