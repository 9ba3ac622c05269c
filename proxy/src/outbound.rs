//! Outbound: accept plaintext from the local app (or legacy clients), originate mTLS to the
//! configured target, and refuse unless the server presents one of the expected SPIFFE IDs.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::OutboundConfig;
use crate::copy::copy_bidirectional;
use crate::listener::{Connection, Shared};
use crate::upstream;

/// One outbound listener's fixed parts.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The listener's config.
    pub config: Arc<OutboundConfig>,
    /// The TLS client config, with the expected identities built in.
    pub client: Arc<ClientConfig>,
    /// The expected identities, as written, for log lines.
    pub expected: Arc<str>,
    /// Process-wide state.
    pub shared: Shared,
    /// The L7 proxy, for `protocol = "http"` or `"detect"`.
    pub http: Option<(
        crate::http::outbound::OutboundHttp,
        crate::detect::DetectConfig,
    )>,
    /// Server-side TLS for legacy clients, when `listen_tls` is configured.
    pub listen_tls: Option<Arc<rustls::ServerConfig>>,
    /// The peer sidecars opaque connections go to.
    pub upstream: upstream::L4Upstream,
}

impl Outbound {
    /// Serves one accepted connection to its end.
    pub async fn handle(
        self,
        app: TcpStream,
        _peer: SocketAddr,
        mut conn: Connection,
    ) -> Connection {
        if let Some((http, detect)) = &self.http {
            // Boxed, as on the inbound side: the HTTP path's large state would otherwise size
            // every connection's task.
            return Box::pin(crate::http::listener::outbound(
                &self, http, detect, app, conn,
            ))
            .await;
        }
        conn.record.original_dst = Some(self.config.listen.to_string());
        conn.record.local_id = Some(self.shared.local_id());
        let timeouts = self.shared.timeouts;
        // A legacy client speaking TLS: finish its handshake before dialing the peer.
        let mut client = match &self.listen_tls {
            None => Either::Left(app),
            Some(acceptor) => {
                match upstream::accept_legacy(
                    &mut conn,
                    acceptor.clone(),
                    app,
                    timeouts.handshake.get(),
                )
                .await
                {
                    Some(legacy) => Either::Right(legacy),
                    None => return conn,
                }
            }
        };
        let Some(mut tls) = upstream::originate(
            &mut conn,
            &self.upstream,
            self.config.sni.as_deref(),
            &self.client,
            timeouts.connect.get(),
            timeouts.handshake.get(),
            &self.expected,
        )
        .await
        else {
            return conn;
        };
        conn.record.decision = Some(crate::access_log::Outcome::Allow);
        let outcome = copy_bidirectional(&mut client, &mut tls, timeouts.idle.get()).await;
        conn.finish_copy(outcome);
        conn
    }
}
