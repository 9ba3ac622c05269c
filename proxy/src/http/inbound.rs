//! Inbound HTTP: requests arriving over mTLS (HTTP/2 from a peer sidecar, HTTP/1.1 or HTTP/2
//! from direct clients) are each authorized with the peer's SPIFFE ID and forwarded to the app
//! with `x-forwarded-client-cert`, in the HTTP version the original client spoke.
//!
//! Per request: request id, one authority and a normalized path (400 when either is refused), the
//! request rewritten as the app will receive it, policy decision on that (403 or gRPC
//! `PERMISSION_DENIED`), then the app. A denied or refused request leaves the connection open
//! for the next one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use meshguard_policy::Request as PolicyRequest;

use super::authority::settle_authority;
use super::body::ProxyBody;
use super::exchange::{Exchange, InFlight, Reporting};
use super::normalize::normalize_path;
use super::orig_proto::{restore_version, strip_connection_headers};
use super::pool::{Connector, H2Pool, Http1Client, UpstreamError, http1_client, tcp_connector};
use super::respond;
use super::serve::{ServeOutcome, serve_connection};
use super::settings::HttpSettings;
use super::upgrade::{self, is_upgrade};
use super::xfcc::set_xfcc;
use crate::access_log::{ConnectionRecord, ErrorClass};
use crate::authz::{self, Authorizer};
use crate::config::Target;

/// One inbound HTTP listener's fixed parts.
#[derive(Debug, Clone)]
pub struct InboundHttp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    forward_to: Target,
    authorizer: Authorizer,
    settings: Arc<HttpSettings>,
    reporting: Reporting,
    app_h1: Http1Client,
    app_h2: H2Pool,
    app_connect: Connector,
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
    /// An inbound HTTP proxy forwarding to `forward_to`.
    pub fn new(
        forward_to: Target,
        authorizer: Authorizer,
        settings: Arc<HttpSettings>,
        reporting: Reporting,
        connect_timeout: std::time::Duration,
    ) -> Self {
        let app_h1 = http1_client(forward_to.clone(), connect_timeout, &settings);
        let app_connect = tcp_connector(forward_to.clone(), connect_timeout);
        let app_h2 = H2Pool::new(app_connect.clone(), settings.clone());
        Self {
            inner: Arc::new(Inner {
                forward_to,
                authorizer,
                settings,
                reporting,
                app_h1,
                app_h2,
                app_connect,
            }),
        }
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

        let decision = {
            let mut facts = PolicyRequest::connection(jiff::Timestamp::now());
            facts.principal = self.peer.peer_id.as_deref();
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
        // The connection's record (which each request line starts from) names it already;
        // formatting the address again for every request showed in profiles.
        if exchange.line.upstream.is_none() {
            exchange.line.upstream = Some(proxy.forward_to.to_string());
        }
        exchange.forwarded = Some(Instant::now());
        let sent = async {
            if version == Version::HTTP_2 {
                proxy.app_h2.send(request).await
            } else {
                proxy
                    .app_h1
                    .request(request)
                    .await
                    .map_err(UpstreamError::Client)
            }
        };
        match tokio::time::timeout(proxy.settings.request_timeout, sent).await {
            Ok(Ok(mut response)) => {
                strip_connection_headers(response.headers_mut());
                exchange.finish(response)
            }
            Ok(Err(error)) => {
                let reason = format!("the app at {} failed: {error}", proxy.forward_to);
                exchange.fail_upstream(grpc, false, reason, proxy.settings.detail)
            }
            Err(_) => {
                let reason = format!(
                    "the app at {} did not answer within {:?}",
                    proxy.forward_to, proxy.settings.request_timeout
                );
                exchange.fail_upstream(grpc, true, reason, proxy.settings.detail)
            }
        }
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
        // The connection's record (which each request line starts from) names it already;
        // formatting the address again for every request showed in profiles.
        if exchange.line.upstream.is_none() {
            exchange.line.upstream = Some(proxy.forward_to.to_string());
        }
        exchange.forwarded = Some(Instant::now());
        let forwarded = async {
            let io = proxy
                .app_connect
                .connect()
                .await
                .map_err(UpstreamError::Connect)?;
            upgrade::forward(request, io).await
        };
        match tokio::time::timeout(proxy.settings.request_timeout, forwarded).await {
            Ok(Ok(response)) => exchange.finish(response),
            Ok(Err(error)) => {
                let reason = format!(
                    "the app at {} failed the upgrade: {error}",
                    proxy.forward_to
                );
                exchange.fail_upstream(false, false, reason, proxy.settings.detail)
            }
            Err(_) => {
                let reason = format!(
                    "the app at {} did not answer the upgrade in time",
                    proxy.forward_to
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
