//! The admin server, in two surfaces. The probe listener (`[admin] listen`, TCP, loopback by
//! default) serves only what an orchestrator and a scraper need and can change nothing: `/live`,
//! `/ready`, `/metrics`. The control surface ([`control`]: `/certs`, `/config`, lockout and
//! break-glass) is off unless `[admin.control]` names a Unix socket, and answers only callers whose
//! uid the kernel vouches for, auditing every call ([`audit`]). [`client`] calls it.
//!
//! `/ready` answers 200 only once credentials are loaded and every listener is bound, and 503 again
//! while the proxy drains, so an orchestrator stops sending traffic before the listeners close.

pub mod audit;
pub mod client;
pub mod control;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

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

/// What the probe endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// Serves the probe endpoints on `listener` until `shutdown` turns true.
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
    if CONTROL_PATHS.contains(&path) {
        // Not here, ever: the network side of a pod is reachable by its neighbours.
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{path} is on the admin control socket only (`[admin.control] socket`), never on TCP\n"
            ),
        );
    }
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".to_owned(),
        );
    }
    match path {
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
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready or /metrics\n".to_owned(),
        ),
    }
}

/// Paths of the control surface, refused on the probe listener.
const CONTROL_PATHS: &[&str] = &[
    "/certs",
    "/config",
    "/lockout",
    "/lockout/clear",
    "/break-glass",
];

pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
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
        assert_eq!(get(addr, "/nope").await.0, 404);
        // The control surface is never on the probe listener, whatever the method.
        for path in CONTROL_PATHS {
            let (status, body) = get(addr, path).await;
            assert_eq!(status, 404, "{path}");
            assert!(body.contains("control socket only"), "{body}");
        }

        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
