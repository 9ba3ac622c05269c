//! The issuance API: HTTPS (hyper 1 over tokio-rustls, meshguard's TLS profile with optional client
//! certificates) with the CA's own server SVID, issued by itself at start and re-issued at half-life.
//!
//! - `POST /v1/sign` `{"token": "...", "csr": "PEM"}`: bootstrap with a one-time token.
//! - `POST /v1/renew` `{"csr": "PEM"}`: renewal over mTLS with the current SVID, same ID only.
//! - `GET /v1/bundle` (PEM) and `GET /v1/bundle?format=spiffe` (JWK Set).
//! - `GET /v1/revoked`: `{"serials": [...]}`, the revoked certificates sidecars must refuse.
//!
//! Success: `{"spiffe_id", "serial", "not_after", "svid" (PEM chain, leaf first), "bundle" (PEM)}`.
//! Errors: `{"error": "<sentence>", "code": "<code>"}`. Workload keys never travel: only CSRs.
//!
//! Every resource an unauthenticated client can hold is bounded ([`Limits`]): connections, the
//! handshake, the request, the connection's life, the signing rate and concurrency. Signing and
//! its audit record run on the blocking pool, never on the async workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshguard_identity::{
    BundleSet, ClientAuth, Credentials, RotatingCredentials, SpiffeId, TlsProfile, X509Svid,
};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::authority::{Authority, ClientCert};
use crate::error::CaError;
pub use api::{ErrorResponse, IssueResponse, RenewRequest, SignRequest, decode_body};
use limits::Gate;
pub use limits::Limits;

mod api;
mod limits;

/// The issuance API server.
pub struct Server {
    ca: Arc<Authority>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    credentials: RotatingCredentials,
    dns: Vec<String>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `listen` and issues the CA's own server certificate (`spiffe://TD/meshguard/ca`, with
    /// `dns` and the listen IP as extra SANs).
    pub async fn bind(ca: Authority, listen: &str, dns: &[String]) -> Result<Self, CaError> {
        let listener = listen_reusable(listen).await?;
        let local = listener
            .local_addr()
            .map_err(|e| CaError::Serve(e.to_string()))?;
        let mut dns = dns.to_vec();
        dns.push(local.ip().to_string());
        dns.push("localhost".to_owned());
        let ca = Arc::new(ca);
        let credentials =
            RotatingCredentials::new(server_credentials(&ca, &dns)?).map_err(CaError::identity)?;
        let config = TlsProfile::new(credentials.clone())
            .client_auth(ClientAuth::Optional)
            .with_alpn(["h2", "http/1.1"])
            .server_config()
            .map_err(CaError::identity)?;
        let server = Self {
            ca,
            listener,
            acceptor: TlsAcceptor::from(config),
            credentials,
            dns,
            gate: Arc::new(Gate::new(Limits::default())),
        };
        Ok(server)
    }

    /// Replaces the default [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Result<Self, CaError> {
        limits.validate()?;
        self.gate = Arc::new(Gate::new(limits));
        Ok(self)
    }

    /// The server's refusal counters, readable while it runs.
    pub fn counters(&self) -> Counters {
        Counters(self.gate.clone())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The CA's SPIFFE ID as a server, for clients' expected identities.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.credentials.current().svid.spiffe_id().clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), CaError> {
        let Self {
            ca,
            listener,
            acceptor,
            credentials,
            dns,
            gate,
        } = self;
        let renewer = tokio::spawn(renew_own_certificate(ca.clone(), credentials, dns));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            // Over the limit: closed before a byte is read, so a flood costs one accept each.
            let Some(permit) = gate.connection() else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, ca, gate) = (acceptor.clone(), ca.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let lifetime = gate.limits.connection_lifetime;
                let served = serve_connection(tcp, peer, &acceptor, ca, gate);
                if tokio::time::timeout(lifetime, served).await.is_err() {
                    tracing::debug!(%peer, ?lifetime, "closed a connection at the end of its lifetime");
                }
            });
        }
        renewer.abort();
        Ok(())
    }
}

/// What the limits refused so far.
#[derive(Debug, Clone)]
pub struct Counters(Arc<Gate>);

impl Counters {
    /// Connections closed at accept because the CA was at its connection limit.
    pub fn over_limit(&self) -> u64 {
        self.0.over_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Signing requests refused by the rate limit (429).
    pub fn rate_limited(&self) -> u64 {
        self.0
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One connection: the handshake within its timeout, then HTTP with header and body timeouts.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    ca: Arc<Authority>,
    gate: Arc<Gate>,
) {
    let limits = &gate.limits;
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            handshake_failed(&ca, peer, e).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
            return;
        }
    };
    // The chain is validated once per connection; each renewal re-checks its expiry.
    let client: Option<Arc<ClientCert>> = tls.get_ref().1.peer_certificates().map(|c| {
        let chain: Vec<CertificateDer<'static>> =
            c.iter().map(|d| d.clone().into_owned()).collect();
        Arc::new(ca.client_cert(&chain, SystemTime::now()))
    });
    let request_timeout = limits.request_timeout;
    let service_gate = gate.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ca, gate, client) = (ca.clone(), service_gate.clone(), client.clone());
        async move {
            Ok::<_, std::convert::Infallible>(api::handle(&ca, &gate, client, peer, req).await)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(8)
        .keep_alive_interval(request_timeout)
        .keep_alive_timeout(request_timeout);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Binds with SO_REUSEADDR, so a restarted CA gets its port back while old connections linger.
async fn listen_reusable(listen: &str) -> Result<TcpListener, CaError> {
    let fail = |e: std::io::Error| CaError::Serve(format!("cannot listen on {listen}: {e}"));
    let addr = tokio::net::lookup_host(listen)
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| CaError::Serve(format!("`{listen}` resolves to no address")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(1024).map_err(fail)
}

/// A failed handshake whose cause is a client certificate that fails the SVID rules is a refused
/// renewal: it goes to the audit trail (on the blocking pool: the record is fsync'd). Other
/// failures (scanners, plaintext) are only logged.
async fn handshake_failed(ca: &Arc<Authority>, peer: SocketAddr, error: std::io::Error) {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(reason) = tls_error.and_then(meshguard_identity::verifier::refusal_reason) else {
        tracing::debug!(%peer, %error, "TLS handshake failed");
        return;
    };
    let (ca, reason) = (ca.clone(), reason.to_string());
    let recorded = tokio::task::spawn_blocking(move || {
        ca.record_handshake_refusal(&peer.to_string(), &reason, SystemTime::now())
    })
    .await;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not record a refused handshake"),
        Err(e) => tracing::error!(error = %e, "the task recording a refused handshake failed"),
    }
}

/// The CA's own server credentials: a fresh local key, an SVID from its own issuer.
fn server_credentials(ca: &Authority, dns: &[String]) -> Result<Credentials, CaError> {
    let id = SpiffeId::from_parts(ca.issuer().trust_domain(), "/meshguard/ca")
        .map_err(CaError::identity)?;
    let ttl = Some(ca.issuer().ttl().max_ttl);
    let (issued, key) = ca.issue_local(
        &id,
        dns,
        ttl,
        "ca serve (own server certificate)",
        SystemTime::now(),
    )?;
    let svid = X509Svid::from_pem(issued.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(CaError::identity)?;
    Ok(Credentials::new(
        svid,
        BundleSet::single(ca.bundle().clone()),
    ))
}

/// Re-issues the server certificate at half of its lifetime; retries each minute on failure.
async fn renew_own_certificate(
    ca: Arc<Authority>,
    credentials: RotatingCredentials,
    dns: Vec<String>,
) {
    loop {
        let lifetime = ca.issuer().ttl().max_ttl;
        tokio::time::sleep(lifetime / 2).await;
        loop {
            let ca2 = ca.clone();
            let dns2 = dns.clone();
            let fresh = tokio::task::spawn_blocking(move || server_credentials(&ca2, &dns2)).await;
            match fresh {
                Ok(Ok(fresh)) => match credentials.rotate(fresh) {
                    Ok(()) => break,
                    Err(e) => tracing::error!(error = %e, "the new server certificate is invalid"),
                },
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not renew the CA's server certificate; retrying")
                }
                Err(e) => tracing::error!(error = %e, "renewal task failed"),
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}
