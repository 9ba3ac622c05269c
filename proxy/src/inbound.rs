//! Inbound: terminate mTLS with the rotating credentials, learn the peer's SPIFFE ID, ask the
//! policy about the connection, then forward to `forward_to`. A denied connection is closed right
//! after the handshake (with a TLS close_notify) and logged with the policy and reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshguard_policy::lockout::Failure;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::access_log::ErrorClass;
use crate::authz::{self, Authorizer, ConnectionFacts};
use crate::config::InboundConfig;
use crate::copy::copy_bidirectional;
use crate::listener::{Connection, Shared};
use crate::{original_dst, tls_error, upstream};

/// One inbound listener's fixed parts.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The listener's config.
    pub config: Arc<InboundConfig>,
    /// The TLS server config (reads the rotating credentials per handshake).
    pub server: Arc<rustls::ServerConfig>,
    /// The listener's policy.
    pub authorizer: Authorizer,
    /// Process-wide state.
    pub shared: Shared,
    /// The L7 proxy, for `protocol = "http"` or `"detect"`.
    pub http: Option<(
        crate::http::inbound::InboundHttp,
        crate::detect::DetectConfig,
    )>,
    /// TLS towards `forward_to` (a gateway's legacy host), when `forward_tls` is configured.
    pub forward_tls: Option<crate::legacy_tls::LegacyClient>,
    /// The endpoints opaque connections are forwarded to.
    pub upstream: upstream::L4Upstream,
}

impl Inbound {
    /// Serves one accepted connection to its end.
    pub async fn handle(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        mut conn: Connection,
    ) -> Connection {
        let local = stream.local_addr().ok();
        // With iptables REDIRECT the client dialed another port; the policy sees that one.
        let dialed = original_dst::original_dst(&stream).ok().or(local);
        conn.record.original_dst = dialed.map(|addr| addr.to_string());
        conn.record.local_id = Some(self.shared.local_id());

        // A blocked source address is refused before the handshake costs anything.
        if let Some(block) = self
            .shared
            .lockout
            .as_ref()
            .and_then(|guard| guard.check(None, Some(peer.ip())))
        {
            crate::lockout::refuse(&mut conn, &block);
            return conn;
        }
        let started = Instant::now();
        let handshake = tokio::time::timeout(
            self.shared.timeouts.handshake.get(),
            TlsAcceptor::from(self.server.clone()).accept(stream),
        );
        let mut tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return self.refused(conn, peer, &tls_error::classify(&error)),
            Err(_) => {
                let timeout =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout");
                return self.refused(conn, peer, &tls_error::classify(&timeout));
            }
        };
        conn.metrics
            .handshake_seconds
            .observe(started.elapsed().as_secs_f64());

        let (_, session) = tls.get_ref();
        let peer_id = meshguard_identity::peer_spiffe_id(session)
            .ok()
            .map(|id| id.to_string());
        let sni = session.server_name().map(str::to_owned);
        let info = meshguard_identity::tls_info(session);
        conn.record.peer_id = peer_id.clone();
        conn.record.sni = sni.clone();
        conn.record.tls_version = info.version;
        conn.record.cipher_suite = info.cipher_suite;
        conn.record.kx_group = info.kx_group;
        conn.record.alpn = info.alpn;

        if let Some(block) = self
            .shared
            .lockout
            .as_ref()
            .and_then(|guard| guard.check(peer_id.as_deref(), None))
        {
            crate::lockout::refuse(&mut conn, &block);
            let _ = tls.shutdown().await;
            return conn;
        }
        if let Some((http, detect)) = &self.http {
            let facts = crate::http::listener::InboundFacts {
                source: peer,
                port: dialed.map_or(self.config.listen.port(), |addr| addr.port()),
                peer_id,
                sni,
            };
            // Boxed: the HTTP path's state is large, and inline it would size every connection's
            // task, L4 ones included, for it.
            return Box::pin(crate::http::listener::inbound(
                &self, http, detect, tls, facts, conn,
            ))
            .await;
        }

        let decision = self.authorizer.decide(ConnectionFacts {
            principal: peer_id.as_deref(),
            source_ip: peer.ip(),
            port: dialed.map_or(self.config.listen.port(), |addr| addr.port()),
            sni: sni.as_deref(),
        });
        authz::record_decision(&mut conn.record, &decision);
        conn.metrics
            .decided(authz::policy_label(&decision), decision.outcome.as_str());
        if !decision.is_allowed() {
            conn.record.error_class = Some(ErrorClass::Policy);
            tracing::warn!(
                listener = %conn.record.listener,
                peer = peer_id.as_deref().unwrap_or("-"),
                source = %peer,
                policy = conn.record.policy.as_deref().unwrap_or("default"),
                reason = conn.record.reason.as_deref().unwrap_or("-"),
                "connection denied by policy"
            );
            if let Some(guard) = &self.shared.lockout {
                // The peer is authenticated: blame its identity, never the address it shares
                // with everyone else behind the same NAT or gateway.
                guard.record(match peer_id.as_deref() {
                    Some(principal) => Failure::Denied { principal },
                    None => Failure::Unauthenticated { address: peer.ip() },
                });
            }
            let _ = tls.shutdown().await;
            return conn;
        }

        let Some((mut app, target)) = upstream::connect_any(
            &mut conn,
            &self.upstream,
            self.shared.timeouts.connect.get(),
        )
        .await
        else {
            let _ = tls.shutdown().await;
            return conn;
        };
        let idle = self.shared.timeouts.idle.get();
        let outcome = match &self.forward_tls {
            None => copy_bidirectional(&mut tls, &mut app, idle).await,
            Some(legacy) => {
                let handshake =
                    tokio::time::timeout(self.shared.timeouts.handshake.get(), legacy.connect(app));
                match handshake.await {
                    Ok(Ok(mut legacy_tls)) => {
                        copy_bidirectional(&mut tls, &mut legacy_tls, idle).await
                    }
                    Ok(Err(error)) => {
                        return upstream::legacy_tls_failed(conn, &target, &error, tls).await;
                    }
                    Err(_) => {
                        let error = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        );
                        return upstream::legacy_tls_failed(conn, &target, &error, tls).await;
                    }
                }
            }
        };
        conn.finish_copy(outcome);
        conn
    }
}

impl Inbound {
    /// A failed handshake counts towards the source address's lockout. Never towards the SPIFFE
    /// ID it presented: that certificate was not verified, and anyone could name a victim in one.
    fn refused(
        &self,
        conn: Connection,
        peer: SocketAddr,
        failure: &tls_error::HandshakeFailure,
    ) -> Connection {
        if let Some(guard) = &self.shared.lockout {
            guard.record(Failure::Unauthenticated { address: peer.ip() });
        }
        refused(conn, failure)
    }
}

/// Records a failed handshake: counted by reason, logged with the reason in words.
fn refused(mut conn: Connection, failure: &tls_error::HandshakeFailure) -> Connection {
    conn.metrics.handshake_failed(failure.label);
    conn.record.peer_id = failure.presented.clone();
    tracing::info!(
        listener = %conn.record.listener,
        source = %conn.record.source_addr,
        reason = %failure.reason,
        "inbound mTLS handshake refused"
    );
    conn.record
        .fail(ErrorClass::Downstream, failure.reason.clone());
    conn
}
