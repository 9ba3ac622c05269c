//! Outbound HTTP: plaintext HTTP/1.1 or HTTP/2 from the app, carried to the peer sidecar over
//! one pooled, multiplexed HTTP/2 mTLS connection (ALPN `h2`). HTTP/1 requests are marked with
//! their original version ([`super::orig_proto`]) so the peer restores it for its app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::authority::settle_authority;
use super::body::ProxyBody;
use super::dispatch::dispatch;
use super::exchange::{Exchange, InFlight, Reporting};
use super::orig_proto::upgrade_to_h2;
use super::pool::{Connector, H2Pool, Io, UpstreamError};
use super::respond;
use super::serve::{ServeOutcome, serve_connection};
use super::settings::HttpSettings;
use super::upgrade::{self, is_upgrade};
use crate::access_log::{ConnectionRecord, Outcome};
use crate::balance::Upstream;
use crate::balance::metrics::UpstreamMetrics;
use crate::config::{Target, UpstreamConfig};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol id of opaque TCP between meshguard sidecars.
pub const ALPN_OPAQUE: &[u8] = b"meshguard-tcp/1";

/// One outbound HTTP listener's fixed parts.
#[derive(Debug, Clone)]
pub struct OutboundHttp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Upstream<PeerClient>,
    /// The route's request timeout (retries included).
    request_timeout: Duration,
    settings: Arc<HttpSettings>,
    reporting: Reporting,
    /// What the latest mTLS handshake with the peer sidecar established: every request line names
    /// the peer and the TLS parameters it travelled with, as the L4 lines do.
    peer_tls: PeerTlsSlot,
}

/// The peer sidecar's verified identity and the negotiated TLS parameters of the latest connection.
#[derive(Debug)]
struct PeerTls {
    peer_id: Option<String>,
    info: meshguard_identity::TlsInfo,
}

type PeerTlsSlot = Arc<arc_swap::ArcSwapOption<PeerTls>>;

/// How one peer sidecar endpoint is reached.
#[derive(Debug)]
pub struct PeerClient {
    /// The multiplexed HTTP/2 mTLS connection.
    h2: H2Pool,
    /// Dedicated mTLS connections (ALPN http/1.1) for Upgrade and CONNECT.
    upgrade: Connector,
}

struct Connection {
    proxy: Arc<Inner>,
    record: ConnectionRecord,
    in_flight: Arc<InFlight>,
}

impl OutboundHttp {
    /// An outbound HTTP proxy to the peer sidecars of `upstream`. `client` is the listener's
    /// mTLS client config (with its expected identities); ALPN `h2` is set here.
    pub async fn new(
        upstream: &UpstreamConfig,
        metrics: &UpstreamMetrics,
        sni: Option<String>,
        client: &ClientConfig,
        settings: Arc<HttpSettings>,
        reporting: Reporting,
        timeouts: (Duration, Duration),
    ) -> Self {
        let peer_tls = PeerTlsSlot::default();
        let mut h2 = client.clone();
        h2.alpn_protocols = vec![ALPN_H2.to_vec()];
        let h2 = Arc::new(h2);
        let mut h1 = client.clone();
        h1.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let h1 = Arc::new(h1);
        let timeouts = (
            upstream.connect_timeout.map_or(timeouts.0, |t| t.get()),
            timeouts.1,
        );
        let make = {
            let (peer_tls, settings) = (peer_tls.clone(), settings.clone());
            move |name: &Target, addr: SocketAddr| {
                let server_name = sni.clone().unwrap_or_else(|| name.host().to_owned());
                let dial = |client: &Arc<ClientConfig>| {
                    mtls_connector(
                        Target::from_addr(addr),
                        server_name.clone(),
                        client.clone(),
                        timeouts,
                        peer_tls.clone(),
                    )
                };
                PeerClient {
                    h2: H2Pool::new(dial(&h2), settings.clone()),
                    upgrade: dial(&h1),
                }
            }
        };
        let request_timeout = upstream
            .request_timeout
            .map_or(settings.request_timeout, |t| t.get());
        let upstream = Upstream::new(
            &reporting.listener,
            upstream.clone(),
            metrics,
            Box::new(make),
        )
        .await;
        Self {
            inner: Arc::new(Inner {
                upstream,
                request_timeout,
                settings,
                reporting,
                peer_tls,
            }),
        }
    }

    /// The endpoints' states, for `/config`.
    pub fn upstream_state(&self) -> Arc<dyn crate::balance::Snapshot> {
        Arc::new(self.inner.upstream.clone())
    }

    /// Serves one plaintext connection from the app until it ends.
    pub async fn serve<I>(
        &self,
        io: I,
        record: ConnectionRecord,
        stop: tokio_util::sync::CancellationToken,
    ) -> ServeOutcome
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let connection = Arc::new(Connection {
            proxy: self.inner.clone(),
            record,
            in_flight: Arc::default(),
        });
        let in_flight = connection.in_flight.clone();
        let service = hyper::service::service_fn(move |request| {
            let connection = connection.clone();
            async move { Ok::<_, Infallible>(connection.handle(request).await) }
        });
        serve_connection(
            io,
            &self.inner.settings,
            service,
            in_flight,
            &self.inner.reporting,
            stop,
        )
        .await
    }
}

impl Inner {
    /// Copies the peer's identity and TLS parameters into a request's log line.
    fn fill_peer_tls(&self, line: &mut ConnectionRecord) {
        let Some(peer) = self.peer_tls.load_full() else {
            return;
        };
        line.peer_id.clone_from(&peer.peer_id);
        line.tls_version.clone_from(&peer.info.version);
        line.cipher_suite.clone_from(&peer.info.cipher_suite);
        line.kx_group.clone_from(&peer.info.kx_group);
        line.alpn.clone_from(&peer.info.alpn);
    }
}

impl Connection {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let proxy = &self.proxy;
        let mut exchange = Exchange::start(
            &mut request,
            &self.record,
            &proxy.reporting,
            &self.in_flight,
        );
        let grpc = respond::is_grpc(request.headers());
        // The peer authorizes the authority this sidecar sends, so send one, canonical: an app
        // whose target and Host disagree is refused here rather than resolved by a guess.
        match settle_authority(&mut request) {
            Ok(authority) => exchange.fields.authority = authority.map(|a| a.to_string()),
            Err(error) => return exchange.refuse(grpc, "bad_authority", &error.to_string()),
        }
        if is_upgrade(&request) {
            return self.forward_upgrade(request, exchange).await;
        }
        if let Err(error) = upgrade_to_h2(&mut request) {
            return exchange.refuse(grpc, "bad_request", &error.to_string());
        }
        // Outbound does not authorize (the peer does); the line says it was forwarded.
        exchange.line.decision = Some(Outcome::Allow);
        exchange.set_decision();
        let request = exchange.count_request(request);
        exchange.forwarded = Some(Instant::now());
        let dispatched = dispatch(
            &proxy.upstream,
            request,
            proxy.request_timeout,
            |endpoint, request| async move { endpoint.client.h2.send(request).await },
        )
        .await;
        proxy.fill_peer_tls(&mut exchange.line);
        let detail = proxy.settings.detail;
        exchange.answer(dispatched, grpc, detail, "the peer sidecar", |peer, reason| {
            tracing::warn!(listener = %proxy.reporting.listener, upstream = %peer, %reason, "outbound request failed");
        })
    }
}

impl Connection {
    /// Upgrade and CONNECT: a dedicated HTTP/1.1 mTLS connection to the peer, then a tunnel.
    async fn forward_upgrade(
        &self,
        request: Request<Incoming>,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let proxy = &self.proxy;
        exchange.line.decision = Some(Outcome::Allow);
        exchange.set_decision();
        // A tunnel is one connection to one endpoint: it is not retried.
        let Some(endpoint) = proxy.upstream.pick(&[]) else {
            let reason = "no peer sidecar endpoint is resolved".to_owned();
            return exchange.fail_upstream(false, false, reason, proxy.settings.detail);
        };
        exchange.line.upstream = Some(endpoint.label.to_string());
        exchange.line.attempts = Some(1);
        exchange.forwarded = Some(Instant::now());
        let forwarded = async {
            let io = endpoint
                .client
                .upgrade
                .connect()
                .await
                .map_err(UpstreamError::Connect)?;
            upgrade::forward(request, io).await
        };
        let forwarded =
            tokio::time::timeout(proxy.request_timeout, endpoint.track(forwarded)).await;
        proxy.fill_peer_tls(&mut exchange.line);
        match forwarded {
            Ok(Ok(response)) => {
                endpoint.succeeded();
                exchange.finish(response)
            }
            Ok(Err(error)) => {
                endpoint.failed(std::time::Instant::now(), &error.to_string());
                let reason = format!(
                    "the peer sidecar at {} failed the upgrade: {error}",
                    endpoint.addr
                );
                exchange.fail_upstream(false, false, reason, proxy.settings.detail)
            }
            Err(_) => {
                let reason = format!(
                    "the peer sidecar at {} did not answer the upgrade in time",
                    endpoint.addr
                );
                exchange.fail_upstream(false, true, reason, proxy.settings.detail)
            }
        }
    }
}

/// Opens mTLS connections to `target`; the config's verifier refuses unexpected identities.
/// Each handshake's peer identity and TLS parameters are stored in `peer_tls` for the log lines.
fn mtls_connector(
    target: Target,
    server_name: String,
    client: Arc<ClientConfig>,
    (connect_timeout, handshake_timeout): (Duration, Duration),
    peer_tls: PeerTlsSlot,
) -> Connector {
    Connector::new(move || {
        let (target, name, client) = (target.clone(), server_name.clone(), client.clone());
        let peer_tls = peer_tls.clone();
        Box::pin(async move {
            let tcp = crate::upstream::connect(&target, connect_timeout)
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?;
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| format!("`{name}` is not a valid TLS server name; set `sni`"))?;
            let handshake = TlsConnector::from(client).connect(server_name, tcp);
            let tls = tokio::time::timeout(handshake_timeout, handshake)
                .await
                .map_err(|_| format!("mTLS handshake with {target} timed out"))?
                .map_err(|e| {
                    format!(
                        "mTLS to {target} failed: {}",
                        crate::tls_error::classify(&e).reason
                    )
                })?;
            let (_, state) = tls.get_ref();
            peer_tls.store(Some(Arc::new(PeerTls {
                peer_id: meshguard_identity::peer_spiffe_id(state)
                    .ok()
                    .map(|id| id.to_string()),
                info: meshguard_identity::tls_info(state),
            })));
            Ok(Box::new(tls) as Box<dyn Io>)
        })
    })
}
