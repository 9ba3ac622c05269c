//! The admin server (loopback by default): `/live`, `/ready`, `/metrics`, `/certs`, `/config`,
//! and the operator's controls: `GET /lockout` lists blocked callers, `DELETE
//! /lockout?principal=ID` or `?source_ip=IP` (or `POST /lockout/clear?...`) lifts a block;
//! `GET /break-glass` lists grants, `POST /break-glass` with JSON `{"principal", "for", "reason"}`
//! adds one.
//!
//! `/ready` answers 200 only once credentials are loaded and every listener is bound, and 503 again
//! while the proxy drains, so an orchestrator stops sending traffic before the listeners close.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::break_glass::{BreakGlassAdmin, GrantRequest, grant_json};
use crate::lockout::{LockoutGuard, block_json};
use crate::metrics::Metrics;
use meshguard_policy::lockout::Caller;

/// The largest admin request body read (a break-glass grant is a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;

/// Whether the proxy can take traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    credentials_loaded: AtomicBool,
    listeners_bound: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Records that the workload has a certificate.
    pub fn set_credentials_loaded(&self) {
        self.credentials_loaded.store(true, Ordering::Release);
    }
    /// Records that every listener is bound.
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }
    /// Records that the proxy is shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// `Ok` when ready, else what is missing, in words.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining: the proxy is shutting down")
        } else if !self.credentials_loaded.load(Ordering::Acquire) {
            Err("not ready: no certificate loaded yet")
        } else if !self.listeners_bound.load(Ordering::Acquire) {
            Err("not ready: listeners not bound yet")
        } else {
            Ok(())
        }
    }
}

/// Produces the `/certs` document (the current SVID's summary; never a key).
pub type CertsSummary = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// The `/certs` document.
    pub certs: CertsSummary,
    /// The effective config, secrets redacted.
    pub config: Arc<serde_json::Value>,
    /// The lockout table, when `[lockout]` is configured.
    pub lockout: Option<LockoutGuard>,
    /// The break-glass grants file, when `[break_glass]` is configured.
    pub break_glass: Option<Arc<BreakGlassAdmin>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let state = Arc::new(state);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

async fn route(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/lockout" || path == "/lockout/clear" {
        return lockout(state, &request);
    }
    if path == "/break-glass" {
        return break_glass(state, request).await;
    }
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".to_owned()),
        "/ready" => match state.readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        "/certs" => json(&(state.certs)()),
        "/config" => json(&state.config),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics, /certs, /config, /lockout or /break-glass\n"
                .to_owned(),
        ),
    }
}

fn lockout(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(guard) = &state.lockout else {
        return text(
            StatusCode::NOT_FOUND,
            "lockout is off: add a [lockout] section to the config to turn it on\n".to_owned(),
        );
    };
    let clearing = match (request.method(), request.uri().path()) {
        (&Method::GET, "/lockout") => false,
        (&Method::DELETE, "/lockout") | (&Method::POST, "/lockout/clear") => true,
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /lockout, DELETE /lockout?principal=ID|source_ip=IP or POST /lockout/clear?...\n"
                    .to_owned(),
            );
        }
    };
    if !clearing {
        let blocks: Vec<_> = guard.list().iter().map(block_json).collect();
        return json(&serde_json::Value::Array(blocks));
    }
    let query = request.uri().query().unwrap_or_default();
    let mut caller = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        caller = match &*key {
            "principal" => Some(Caller::Principal(value.as_ref().into())),
            "source_ip" => match value.parse() {
                Ok(ip) => Some(Caller::Address(ip)),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("source_ip `{value}` is not an IP address\n"),
                    );
                }
            },
            _ => caller,
        };
    }
    let Some(caller) = caller else {
        return text(
            StatusCode::BAD_REQUEST,
            "say whom to clear: ?principal=spiffe://... or ?source_ip=10.0.0.5\n".to_owned(),
        );
    };
    if guard.clear(&caller) {
        text(StatusCode::OK, format!("cleared {caller}\n"))
    } else {
        text(
            StatusCode::NOT_FOUND,
            format!("{caller} is not tracked: nothing to clear\n"),
        )
    }
}

async fn break_glass(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(admin) = &state.break_glass else {
        return text(
            StatusCode::NOT_FOUND,
            "break-glass is off: add `[break_glass] file = \"break-glass.toml\"` to the config\n"
                .to_owned(),
        );
    };
    let now = jiff::Timestamp::now();
    match *request.method() {
        Method::GET => match admin.list(now).await {
            Ok(grants) => json(&grants),
            Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        },
        Method::POST => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(error) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "cannot read the request body (at most {MAX_BODY} bytes): {error}\n"
                        ),
                    );
                }
            };
            let grant: GrantRequest = match serde_json::from_slice(&body) {
                Ok(grant) => grant,
                Err(error) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "send JSON {{\"principal\": \"spiffe://...\", \"for\": \"15m\", \"reason\": \"...\"}}: {error}\n"
                        ),
                    );
                }
            };
            match admin.grant(grant, now).await {
                Ok(grant) => {
                    let mut response = json(&grant_json(&grant, now));
                    *response.status_mut() = StatusCode::CREATED;
                    response
                }
                Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /break-glass or POST /break-glass\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn endpoints_answer_and_ready_follows_the_flags() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Arc::new(Readiness::default());
        let metrics = Arc::new(Metrics::new());
        metrics.access_log_dropped.inc();
        let state = AdminState {
            metrics,
            readiness: readiness.clone(),
            certs: Arc::new(|| serde_json::json!({"spiffe_id": "spiffe://td/x"})),
            config: Arc::new(serde_json::json!({"admin": {"listen": "127.0.0.1:15000"}})),
            lockout: None,
            break_glass: None,
        };
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state, stopped));

        assert_eq!(get(addr, "/live").await.0, 200);
        let (status, body) = get(addr, "/ready").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: no certificate loaded yet\n")
        );
        readiness.set_credentials_loaded();
        assert_eq!(
            get(addr, "/ready").await.1,
            "not ready: listeners not bound yet\n"
        );
        readiness.set_listeners_bound();
        assert_eq!(get(addr, "/ready").await.0, 200);
        readiness.set_draining();
        assert_eq!(get(addr, "/ready").await.0, 503);

        assert!(
            get(addr, "/metrics")
                .await
                .1
                .contains("meshguard_access_log_dropped_total 1")
        );
        assert!(get(addr, "/certs").await.1.contains("spiffe://td/x"));
        assert!(get(addr, "/config").await.1.contains("127.0.0.1:15000"));
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
