//! Inbound HTTP: requests arriving over mTLS (HTTP/2 from a peer sidecar, HTTP/1.1 or HTTP/2
//! from direct clients) are each authorized with the peer's SPIFFE ID and forwarded to the app
//! with `x-forwarded-client-cert`, in the HTTP version the original client spoke.
//!
//! Per request: request id, one authority and a normalized path (400 when either is refused), the
//! request rewritten as the app will receive it, policy decision on that (403 or gRPC
//! `PERMISSION_DENIED`), then the app. A denied or refused request leaves the connection open
//! for the next one. With `[lockout]`, each denial counts against the peer's SPIFFE ID as a
//! denied connection does, and a peer blocked meanwhile gets 403 for every further request on
//! the connections it already has (new ones are refused after the handshake).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use meshguard_policy::Request as PolicyRequest;
use meshguard_policy::lockout::Failure;

use super::authority::settle_authority;
use super::body::ProxyBody;
use super::dispatch::dispatch;
use super::exchange::{Exchange, InFlight, Reporting};
use super::normalize::normalize_path;
use super::orig_proto::{restore_version, strip_connection_headers};
use super::pool::{Connector, H2Pool, Http1Client, UpstreamError, http1_client, tcp_connector};
use super::respond;
use super::serve::{ServeOutcome, serve_connection};
use super::settings::HttpSettings;
use super::upgrade::{self, is_upgrade};
use super::xfcc::set_xfcc;
use crate::access_log::{ConnectionRecord, ErrorClass, Outcome};
use crate::authz::{self, Authorizer};
use crate::balance::Upstream;
use crate::balance::metrics::UpstreamMetrics;
use crate::config::{Target, UpstreamConfig};
use crate::lockout::LockoutGuard;

/// One inbound HTTP listener's fixed parts.
#[derive(Debug, Clone)]
pub struct InboundHttp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Upstream<AppClient>,
    /// The route's request timeout (retries included).
    request_timeout: Duration,
    authorizer: Authorizer,
    /// Blocks after repeated denials, when `[lockout]` is configured.
    lockout: Option<LockoutGuard>,
    settings: Arc<HttpSettings>,
    reporting: Reporting,
}

/// How one app endpoint is reached: HTTP/1.1 and HTTP/2 pools, and a dialer for upgrades.
#[derive(Debug)]
pub struct AppClient {
    h1: Http1Client,
    h2: H2Pool,
    connect: Connector,
}

impl AppClient {
    /// The clients of the app endpoint at `addr`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, settings: &Arc<HttpSettings>) -> Self {
        let target = Target::from_addr(addr);
        let connect = tcp_connector(target.clone(), connect_timeout);
        Self {
            h1: http1_client(target, connect_timeout, settings),
            h2: H2Pool::new(connect.clone(), settings.clone()),
            connect,
        }
    }
}

/// What is known about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct PeerContext {
    /// The peer's verified SPIFFE ID.
    pub peer_id: Option<String>,
    /// This proxy's SPIFFE ID.
    pub local_id: String,
    /// The client's address.
    pub source: SocketAddr,
    /// The destination port the client dialed.
    pub port: u16,
    /// The server name the client sent.
    pub sni: Option<String>,
    /// The connection's access-log record (L4 fields) that each request line starts from.
    pub record: ConnectionRecord,
}

struct Connection {
    proxy: Arc<Inner>,
    peer: PeerContext,
    in_flight: Arc<InFlight>,
}

impl InboundHttp {
    /// An inbound HTTP proxy forwarding to the app endpoints of `upstream`.
    pub async fn new(
        upstream: &UpstreamConfig,
        metrics: &UpstreamMetrics,
        authorizer: Authorizer,
        lockout: Option<LockoutGuard>,
        settings: Arc<HttpSettings>,
        reporting: Reporting,
        connect_timeout: Duration,
    ) -> Self {
        let connect_timeout = upstream
            .connect_timeout
            .map_or(connect_timeout, |t| t.get());
        let request_timeout = upstream
            .request_timeout
            .map_or(settings.request_timeout, |t| t.get());
        let make = {
            let settings = settings.clone();
            move |_: &Target, addr| AppClient::new(addr, connect_timeout, &settings)
        };
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
                authorizer,
                lockout,
                settings,
                reporting,
            }),
        }
    }

    /// The endpoints' states, for `/config`.
    pub fn upstream_state(&self) -> Arc<dyn crate::balance::Snapshot> {
        Arc::new(self.inner.upstream.clone())
    }

    /// Serves HTTP on one decrypted connection until it closes, idles out or `stop` fires.
    pub async fn serve<I>(
        &self,
        io: I,
        peer: PeerContext,
        stop: tokio_util::sync::CancellationToken,
    ) -> ServeOutcome
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let connection = Arc::new(Connection {
            proxy: self.inner.clone(),
            peer,
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

impl Connection {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let proxy = &self.proxy;
        let mut exchange = Exchange::start(
            &mut request,
            &self.peer.record,
            &proxy.reporting,
            &self.in_flight,
        );
        let grpc = respond::is_grpc(request.headers());

        let upgrade = is_upgrade(&request);
        let authority = match settle_authority(&mut request) {
            Ok(authority) => authority,
            Err(error) => return exchange.refuse(grpc, "bad_authority", &error.to_string()),
        };
        exchange.fields.authority = authority.as_ref().map(ToString::to_string);
        // CONNECT names an authority, not a path: policy sees its method and host only.
        let path_and_query = if request.method() == Method::CONNECT {
            None
        } else {
            let path = match normalize_path(request.uri().path()) {
                Ok(path) => path.into_owned(),
                Err(error) => return exchange.refuse(grpc, "bad_path", &error.to_string()),
            };
            exchange.fields.path.clone_from(&path);
            Some(match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            })
        };

        // Policy decides on the request as the app will receive it: the proxy's own XFCC in
        // place of any the client sent, the normalized path, no hop-by-hop headers. A header
        // policy could see but the app would not (or the reverse) is a bypass.
        set_xfcc(
            request.headers_mut(),
            &self.peer.local_id,
            self.peer.peer_id.as_deref(),
        );
        let mut version = request.version();
        if !upgrade {
            // Forward exactly what was authorized: the normalized path.
            let path_and_query = path_and_query.as_deref().unwrap_or("/");
            if let Err(error) = set_path(&mut request, authority, path_and_query) {
                exchange.line.fail(ErrorClass::Downstream, error);
                let response = respond::bad_request(
                    grpc,
                    &exchange.fields.request_id,
                    "the request target is invalid",
                );
                return exchange.finish(response);
            }
            version = restore_version(&mut request);
            strip_connection_headers(request.headers_mut());
        }

        let principal = self.peer.peer_id.as_deref();
        let lockout = proxy.lockout.as_ref().zip(principal);
        if let Some(block) = lockout.and_then(|(guard, p)| guard.check(Some(p), None)) {
            let reason = crate::lockout::refusal_reason(&block);
            exchange.line.decision = Some(Outcome::Deny);
            exchange.line.rule = Some("lockout".to_owned());
            exchange.line.fail(ErrorClass::Policy, reason.clone());
            let request_id = &exchange.fields.request_id;
            let response = respond::denied(grpc, request_id, &reason, proxy.settings.detail);
            return exchange.finish(response);
        }
        let decision = {
            let mut facts = PolicyRequest::connection(jiff::Timestamp::now());
            facts.principal = principal;
            facts.source_ip = Some(self.peer.source.ip());
            facts.port = Some(self.peer.port);
            facts.sni = self.peer.sni.as_deref();
            facts.method = Some(request.method().as_str());
            facts.host = exchange.fields.authority.as_deref();
            facts.path = path_and_query.as_deref();
            facts.headers = Some(request.headers());
            proxy.authorizer.evaluate(&facts)
        };
        authz::record_decision(&mut exchange.line, &decision);
        exchange.fields.reasons = decision.reasons.iter().map(|r| r.to_string()).collect();
        exchange.fields.break_glass = decision.break_glass.is_some();
        exchange.set_decision();
        if !decision.is_allowed() {
            if let Some((guard, principal)) = lockout {
                // Only the identity is blamed: its address may be a whole NAT pool's.
                guard.record(Failure::Denied { principal });
            }
            exchange.line.error_class = Some(ErrorClass::Policy);
            let reason = exchange.line.reason.clone().unwrap_or_default();
            tracing::info!(
                listener = %proxy.reporting.listener,
                peer = self.peer.peer_id.as_deref().unwrap_or("-"),
                method = %exchange.fields.method,
                path = %exchange.fields.path,
                request_id = %exchange.fields.request_id,
                reason = %reason,
                "request denied by policy"
            );
            let response = respond::denied(
                grpc,
                &exchange.fields.request_id,
                &reason,
                proxy.settings.detail,
            );
            return exchange.finish(response);
        }

        if upgrade {
            return self
                .forward_upgrade(request, path_and_query, exchange)
                .await;
        }
        let request = exchange.count_request(request);
        exchange.forwarded = Some(Instant::now());
        let dispatched = dispatch(
            &proxy.upstream,
            request,
            proxy.request_timeout,
            |endpoint, request| async move {
                if version == Version::HTTP_2 {
                    endpoint.client.h2.send(request).await
                } else {
                    endpoint
                        .client
                        .h1
                        .request(request)
                        .await
                        .map_err(UpstreamError::Client)
                }
            },
        )
        .await;
        exchange.answer(
            dispatched,
            grpc,
            proxy.settings.detail,
            "the app",
            |_, _| {},
        )
    }
}

impl Connection {
    /// An authorized Upgrade or CONNECT: its own connection to the app, then a tunnel.
    async fn forward_upgrade(
        &self,
        mut request: Request<Incoming>,
        path_and_query: Option<String>,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let proxy = &self.proxy;
        if let Some(path_and_query) = path_and_query
            && let Ok(uri) = path_and_query.parse::<Uri>()
        {
            *request.uri_mut() = uri;
        }
        // A tunnel is one connection to one endpoint: it is not retried.
        let Some(endpoint) = proxy.upstream.pick(&[]) else {
            let reason = "no app endpoint is resolved".to_owned();
            return exchange.fail_upstream(false, false, reason, proxy.settings.detail);
        };
        exchange.line.upstream = Some(endpoint.label.to_string());
        exchange.line.attempts = Some(1);
        exchange.forwarded = Some(Instant::now());
        let forwarded = async {
            let io = endpoint
                .client
                .connect
                .connect()
                .await
                .map_err(UpstreamError::Connect)?;
            upgrade::forward(request, io).await
        };
        let forwarded = endpoint.track(forwarded);
        match tokio::time::timeout(proxy.request_timeout, forwarded).await {
            Ok(Ok(response)) => {
                endpoint.succeeded();
                exchange.finish(response)
            }
            Ok(Err(error)) => {
                endpoint.failed(std::time::Instant::now(), &error.to_string());
                let reason = format!("the app at {} failed the upgrade: {error}", endpoint.addr);
                exchange.fail_upstream(false, false, reason, proxy.settings.detail)
            }
            Err(_) => {
                let reason = format!(
                    "the app at {} did not answer the upgrade in time",
                    endpoint.addr
                );
                exchange.fail_upstream(false, true, reason, proxy.settings.detail)
            }
        }
    }
}

/// Replaces the request's path and query, making the URI absolute (`http://authority/...`, with
/// the authority [`settle_authority`] settled on) as the upstream clients need.
fn set_path<B>(
    request: &mut Request<B>,
    authority: Option<http::uri::Authority>,
    path_and_query: &str,
) -> Result<(), String> {
    let authority = authority
        .ok_or_else(|| "the request has neither :authority nor a valid Host header".to_owned())?;
    let uri = Uri::builder()
        .scheme(
            request
                .uri()
                .scheme()
                .cloned()
                .unwrap_or(http::uri::Scheme::HTTP),
        )
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| format!("cannot rebuild the request URI: {e}"))?;
    *request.uri_mut() = uri;
    Ok(())
}
