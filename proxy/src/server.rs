//! Wiring: from a [`Config`] to running listeners, the admin server and the access log, and the
//! drain on shutdown. The identity source must deliver a certificate before any listener binds:
//! a workload without one has nothing to serve.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use meshguard_identity::source::ca::{CaSource, CaSourceConfig};
use meshguard_identity::source::{
    FilesConfig, FilesSource, IdentitySource, RunningIdentity, SourceError, StartOptions,
    WorkloadApiSource,
};
use meshguard_identity::{IdentityError, RotatingCredentials, TlsProfile};
use meshguard_policy::PolicyError;
use meshguard_policy::decision_log::DecisionLog;
use meshguard_policy::watch::PolicyWatcher;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, Direction};
use crate::admin::audit::ControlAudit;
use crate::admin::control::ControlState;
use crate::admin::{self, AdminState, Readiness};
use crate::authz::Authorizer;
use crate::balance::Upstream;
use crate::config::{Config, DecisionLogConfig, ExpectedId, IdentitySourceConfig};
use crate::inbound::Inbound;
use crate::listener::{Listening, Shared, accept_loop};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::transparent::{Route, RouteTable, Transparent};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listener's address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("{0}")]
    AccessLog(#[source] std::io::Error),
    /// A policy file is missing or invalid.
    #[error("policy {path}: {source}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PolicyError,
    },
    /// The identity source is misconfigured.
    #[error("identity source: {0}")]
    Identity(#[from] SourceError),
    /// The TLS profile could not be built.
    #[error("TLS setup: {0}")]
    Tls(#[from] IdentityError),
    /// The admin control socket or its audit log could not be set up.
    #[error("admin control {what} {path}: {source}")]
    AdminControl {
        /// `socket` or `audit log`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A gateway's legacy-side TLS (`forward_tls`, `listen_tls`) could not be set up.
    #[error("{0}")]
    LegacyTls(#[from] crate::legacy_tls::LegacyTlsError),
}

/// Where credentials come from: the config's source, or ready-made ones (tests, embedding).
#[derive(Debug, Default)]
pub enum CredentialsInput {
    /// Start the source named in `[identity]`.
    #[default]
    FromConfig,
    /// Use these credentials; the caller rotates them.
    Given(RotatingCredentials),
}

/// A running proxy: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct RunningProxy {
    /// The admin server's address.
    pub admin_addr: SocketAddr,
    /// Inbound listeners' addresses, in config order.
    pub inbound_addrs: Vec<SocketAddr>,
    /// Outbound listeners' addresses, in config order.
    pub outbound_addrs: Vec<SocketAddr>,
    /// The transparent listener's address.
    pub transparent_addr: Option<SocketAddr>,
    /// The credentials the listeners use.
    pub credentials: RotatingCredentials,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The inbound listeners' policies, in config order.
    pub authorizers: Vec<Authorizer>,
    stop: watch::Sender<bool>,
    done: JoinHandle<()>,
}

impl RunningProxy {
    /// Stops accepting, drains open connections up to the grace period, flushes the access log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }

    /// Waits until the proxy has stopped (after [`Self::shutdown`] from elsewhere, or a signal).
    pub async fn stopped(self) {
        let _ = self.done.await;
    }

    /// A handle that triggers the same shutdown as [`Self::shutdown`].
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Starts the proxy: admin first (so `/live` answers while waiting for a certificate), then the
/// identity, the policies and the listeners.
pub async fn start(
    config: Config,
    credentials: CredentialsInput,
) -> Result<RunningProxy, ProxyError> {
    let metrics = Arc::new(Metrics::new());
    let (access_log, log_writer) = AccessLog::open(
        &config.access_log.path,
        config.access_log.queue,
        metrics.access_log_dropped.clone(),
    )
    .await
    .map_err(ProxyError::AccessLog)?;
    let access_log = access_log.with_on_full(config.access_log.on_full);
    let (stop, stopped) = watch::channel(false);
    let stopped_admin = stopped.clone();
    let readiness = Arc::new(Readiness::default());

    let admin_listener = bind(config.admin.listen, "admin").await?;
    let admin_addr = local_addr(&admin_listener, config.admin.listen);
    let lockout = config
        .lockout
        .as_ref()
        .and_then(|settings| crate::lockout::LockoutGuard::new(settings, metrics.lockout.clone()));
    let lockout_task = lockout
        .clone()
        .map(|guard| tokio::spawn(guard.expire_periodically()));
    let break_glass = config.break_glass.as_ref().map(|settings| {
        Arc::new(crate::break_glass::BreakGlassAdmin::new(
            settings.file.clone(),
        ))
    });
    // The admin server answers before the first certificate arrives: `/live` says the process is
    // up and `/ready` says what it is waiting for, which is what an orchestrator needs to see.
    let loaded: Arc<OnceLock<RotatingCredentials>> = Arc::default();
    let upstream_states_shared = crate::balance::States::default();
    let admin_state = AdminState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    };
    let control = match &config.admin.control {
        Some(settings) => Some(start_control(
            settings,
            ControlState {
                uids: Vec::new(),
                audit: open_control_audit(settings)?,
                certs: certs_summary(loaded.clone()),
                config: Arc::new(config.to_redacted_json()),
                upstreams: upstream_states_shared.clone(),
                lockout: lockout.clone(),
                break_glass: break_glass.clone(),
            },
            stopped.clone(),
        )?),
        None => None,
    };
    let admin_task = tokio::spawn(async move {
        admin::serve(admin_listener, admin_state, stopped_admin).await;
        if let Some((task, socket)) = control {
            let _ = task.await;
            let _ = std::fs::remove_file(socket);
        }
    });
    let (credentials, identity) = match credentials {
        CredentialsInput::Given(credentials) => (credentials, None),
        CredentialsInput::FromConfig => match start_identity(&config.identity).await {
            Ok(running) => (running.credentials().clone(), Some(running)),
            Err(error) => {
                admin_task.abort();
                if let Some(task) = &lockout_task {
                    task.abort();
                }
                return Err(error);
            }
        },
    };
    let _ = loaded.set(credentials.clone());
    readiness.set_credentials_loaded();
    let expiry_task = tokio::spawn(track_expiry(credentials.clone(), metrics.clone()));

    let shared = Shared {
        credentials: credentials.clone(),
        access_log: access_log.clone(),
        timeouts: config.timeouts,
        connections: TaskTracker::new(),
        drain: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        lockout: lockout.clone(),
    };
    let mut loops = Vec::new();
    let mut watchers: Vec<PolicyWatcher> = Vec::new();
    let mut authorizers = Vec::new();

    let server_config = TlsProfile::new(credentials.clone()).server_config()?;
    // HTTP and detect listeners negotiate h2, http/1.1 or meshguard's opaque-TCP id by ALPN.
    let http_server_config = TlsProfile::new(credentials.clone())
        .with_alpn([
            crate::http::outbound::ALPN_H2,
            crate::http::outbound::ALPN_HTTP1,
            crate::http::outbound::ALPN_OPAQUE,
        ])
        .server_config()?;
    let http_settings = Arc::new(config.http.settings());
    let decision_log = match &config.decision_log {
        Some(log) => Some(open_decision_log(
            log,
            metrics.decision_log_dropped.clone(),
        )?),
        None => None,
    };
    let mut inbound_addrs = Vec::new();
    let mut upstream_states: Vec<Arc<dyn crate::balance::Snapshot>> = Vec::new();
    for inbound in &config.inbound {
        let name = inbound.display_name();
        let mut authorizer = Authorizer::load_with_break_glass(
            &inbound.policy,
            config.break_glass.as_ref().map(|b| b.file.as_path()),
        )
        .map_err(|source| ProxyError::Policy {
            path: inbound.policy.clone(),
            source,
        })?;
        if let Some(log) = &decision_log {
            authorizer = authorizer.with_decision_log(log.clone());
        }
        match authorizer.watch() {
            Ok(watcher) => watchers.push(watcher),
            Err(error) => {
                tracing::warn!(%error, policy = %inbound.policy.display(), "cannot watch the policy; changes need a restart")
            }
        }
        let listener = bind(inbound.listen, &name).await?;
        inbound_addrs.push(local_addr(&listener, inbound.listen));
        let l7 = inbound.protocol != crate::config::Protocol::Tcp;
        let http = l7.then(|| {
            let reporting = crate::http::exchange::Reporting {
                listener: Arc::from(name.as_str()),
                access_log: access_log.clone(),
                metrics: metrics.http.clone(),
            };
            (reporting, http_settings.detect.clone())
        });
        let http = match http {
            Some((reporting, detect)) => {
                let proxy = crate::http::inbound::InboundHttp::new(
                    &inbound.upstream,
                    &metrics.upstream,
                    authorizer.clone(),
                    lockout.clone(),
                    http_settings.clone(),
                    reporting,
                    config.timeouts.connect.get(),
                )
                .await;
                upstream_states.push(proxy.upstream_state());
                Some((proxy, detect))
            }
            None => None,
        };
        let l4_upstream = Upstream::new(
            &name,
            inbound.upstream.clone(),
            &metrics.upstream,
            Box::new(|_, _| ()),
        )
        .await;
        if !l7 || inbound.protocol == crate::config::Protocol::Detect {
            upstream_states.push(Arc::new(l4_upstream.clone()));
        }
        let handler = Inbound {
            config: Arc::new(inbound.clone()),
            server: if l7 {
                http_server_config.clone()
            } else {
                server_config.clone()
            },
            authorizer: authorizer.clone(),
            shared: shared.clone(),
            http,
            forward_tls: inbound
                .forward_tls
                .as_ref()
                .map(crate::legacy_tls::LegacyClient::new)
                .transpose()?,
            upstream: l4_upstream,
        };
        authorizers.push(authorizer);
        let listening = Listening {
            listener,
            metrics: metrics.listener(&name, Direction::Inbound),
            name,
            direction: Direction::Inbound,
            max_connections: inbound.max_connections,
        };
        loops.push(tokio::spawn(accept_loop(
            listening,
            shared.clone(),
            stopped.clone(),
            move |stream, peer, conn| handler.clone().handle(stream, peer, conn),
        )));
    }

    let mut outbound_addrs = Vec::new();
    for outbound in &config.outbound {
        let name = outbound.display_name();
        // Opaque TCP to a peer sidecar says so by ALPN, so a `detect` inbound skips detection.
        let client = TlsProfile::new(credentials.clone())
            .expect(ExpectedId::to_expected(&outbound.expect))
            .with_alpn([crate::http::outbound::ALPN_OPAQUE])
            .client_config()?;
        let listener = bind(outbound.listen, &name).await?;
        outbound_addrs.push(local_addr(&listener, outbound.listen));
        let http = (outbound.protocol != crate::config::Protocol::Tcp).then(|| {
            crate::http::exchange::Reporting {
                listener: Arc::from(name.as_str()),
                access_log: access_log.clone(),
                metrics: metrics.http.clone(),
            }
        });
        let http = match http {
            Some(reporting) => {
                let proxy = crate::http::outbound::OutboundHttp::new(
                    &outbound.upstream,
                    &metrics.upstream,
                    outbound.sni.clone(),
                    &client,
                    http_settings.clone(),
                    reporting,
                    (
                        config.timeouts.connect.get(),
                        config.timeouts.handshake.get(),
                    ),
                )
                .await;
                upstream_states.push(proxy.upstream_state());
                Some((proxy, http_settings.detect.clone()))
            }
            None => None,
        };
        let l4_upstream = Upstream::new(
            &name,
            outbound.upstream.clone(),
            &metrics.upstream,
            Box::new(|_, _| ()),
        )
        .await;
        if outbound.protocol != crate::config::Protocol::Http {
            upstream_states.push(Arc::new(l4_upstream.clone()));
        }
        let handler = Outbound {
            config: Arc::new(outbound.clone()),
            client,
            expected: Arc::from(join(&outbound.expect)),
            shared: shared.clone(),
            http,
            listen_tls: outbound
                .listen_tls
                .as_ref()
                .map(crate::legacy_tls::server_config)
                .transpose()?,
            upstream: l4_upstream,
        };
        let listening = Listening {
            listener,
            metrics: metrics.listener(&name, Direction::Outbound),
            name,
            direction: Direction::Outbound,
            max_connections: outbound.max_connections,
        };
        loops.push(tokio::spawn(accept_loop(
            listening,
            shared.clone(),
            stopped.clone(),
            move |stream, peer, conn| handler.clone().handle(stream, peer, conn),
        )));
    }

    let _ = upstream_states_shared.set(upstream_states);
    let mut transparent_addr = None;
    if let Some(transparent) = &config.transparent {
        let name = format!("transparent:{}", transparent.listen);
        let mut routes = Vec::new();
        for route in &transparent.route {
            let client = TlsProfile::new(credentials.clone())
                .expect(ExpectedId::to_expected(&route.expect))
                .client_config()?;
            routes.push(Route {
                config: route.clone(),
                client,
                expected: Arc::from(join(&route.expect)),
            });
        }
        let listener = bind(transparent.listen, &name).await?;
        transparent_addr = Some(local_addr(&listener, transparent.listen));
        let handler = Transparent {
            config: Arc::new(transparent.clone()),
            table: Arc::new(RouteTable::new(routes)),
            shared: shared.clone(),
        };
        let listening = Listening {
            listener,
            metrics: metrics.listener(&name, Direction::Transparent),
            name,
            direction: Direction::Transparent,
            max_connections: transparent.max_connections,
        };
        loops.push(tokio::spawn(accept_loop(
            listening,
            shared.clone(),
            stopped.clone(),
            move |stream, peer, conn| handler.clone().handle(stream, peer, conn),
        )));
    }
    if let Some(break_glass) = &break_glass {
        break_glass.set_stores(authorizers.iter().map(|a| a.store().clone()).collect());
    }
    readiness.set_listeners_bound();
    tracing::info!(%admin_addr, ?inbound_addrs, ?outbound_addrs, ?transparent_addr, spiffe_id = %shared.local_id(), "proxy ready");

    let grace = config.timeouts.drain_grace.get();
    let mut on_stop = stopped.clone();
    let done = tokio::spawn(async move {
        let _ = on_stop.wait_for(|stop| *stop).await;
        readiness.set_draining();
        shared.drain.cancel();
        for accept in loops {
            let _ = accept.await;
        }
        let open = shared.connections.len();
        tracing::info!(
            open,
            ?grace,
            "draining: no new connections; waiting for open ones"
        );
        shared.connections.close();
        if tokio::time::timeout(grace, shared.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.connections.len(),
                "drain grace period over; closing the remaining connections"
            );
            shared.hard_stop.cancel();
            shared.connections.wait().await;
        }
        drop(watchers);
        drop(identity);
        expiry_task.abort();
        if let Some(task) = lockout_task {
            task.abort();
        }
        let _ = admin_task.await;
        drop(shared);
        drop(access_log);
        let _ = log_writer.await;
        tracing::info!("proxy stopped");
    });
    Ok(RunningProxy {
        admin_addr,
        inbound_addrs,
        outbound_addrs,
        transparent_addr,
        credentials,
        metrics,
        authorizers,
        stop,
        done,
    })
}

/// Runs the proxy until `signal` resolves (SIGTERM in the binary), then drains and returns.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<(), ProxyError> {
    tokio::pin!(signal);
    let running = tokio::select! {
        running = start(config, CredentialsInput::FromConfig) => running?,
        () = &mut signal => {
            tracing::info!("stopped before the proxy was ready");
            return Ok(());
        }
    };
    signal.await;
    running.shutdown().await;
    Ok(())
}

async fn start_identity(config: &IdentitySourceConfig) -> Result<RunningIdentity, ProxyError> {
    let source: Box<dyn IdentitySource> = match config {
        IdentitySourceConfig::Files { cert, key, bundle } => {
            Box::new(FilesSource::new(FilesConfig::new(cert, key, bundle))?)
        }
        IdentitySourceConfig::WorkloadApi(endpoint) => Box::new(WorkloadApiSource::new(endpoint)?),
        IdentitySourceConfig::Ca {
            url,
            spiffe_id,
            token_file,
            bundle,
        } => Box::new(CaSource::new(CaSourceConfig::new(
            url.clone(),
            spiffe_id.clone(),
            token_file,
            bundle,
        ))?),
    };
    tracing::info!(source = %source.name(), "waiting for the first certificate; no listener binds before it");
    Ok(source.start(StartOptions::default()).await)
}

/// Opens the decision log; a background thread appends the policy crate's lines to the file and
/// ends when the last sender (the authorizers) is dropped.
fn open_decision_log(
    config: &DecisionLogConfig,
    dropped: prometheus_client::metrics::counter::Counter,
) -> Result<Arc<DecisionLog>, ProxyError> {
    use std::io::Write as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)
        .map_err(|e| {
            ProxyError::AccessLog(std::io::Error::new(
                e.kind(),
                format!("cannot open decision log {}: {e}", config.path.display()),
            ))
        })?;
    let redact: Vec<&str> = config.redact_headers.iter().map(String::as_str).collect();
    let (log, lines) = DecisionLog::channel(config.queue.max(1), &redact);
    let warnings = crate::access_log::DropWarnings::default();
    let log = log.with_on_full(config.on_full).with_on_drop(move || {
        dropped.inc();
        warnings.dropped("decision log");
    });
    let path = config.path.clone();
    std::thread::Builder::new()
        .name("meshguard-decision-log".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Ok(line) = lines.recv() {
                let mut result = writeln!(out, "{line}");
                // Write what is queued, then flush once per burst.
                while let Ok(more) = lines.try_recv() {
                    result = result.and_then(|()| writeln!(out, "{more}"));
                }
                if let Err(error) = result.and_then(|()| out.flush()) {
                    tracing::error!(%error, path = %path.display(), "writing the decision log failed");
                }
            }
        })
        .map_err(ProxyError::AccessLog)?;
    Ok(Arc::new(log))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ProxyError> {
    bind_socket(addr).map_err(|source| ProxyError::Bind {
        addr,
        what: what.to_owned(),
        source,
    })
}

/// Binds like `TcpListener::bind`, except that an IPv6 listener is dual-stack whatever the host's
/// `net.ipv6.bindv6only`: `[::]` then takes the IPv4 and the IPv6 connections that capture
/// redirects to one port.
fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn open_control_audit(
    settings: &crate::config::AdminControlConfig,
) -> Result<ControlAudit, ProxyError> {
    ControlAudit::open(&settings.audit_log).map_err(|source| ProxyError::AdminControl {
        what: "audit log",
        path: settings.audit_log.clone(),
        source,
    })
}

/// Binds the control socket and serves it; the task ends on shutdown and the socket path is
/// returned so the caller removes it after.
fn start_control(
    settings: &crate::config::AdminControlConfig,
    mut state: ControlState,
    stopped: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, PathBuf), ProxyError> {
    let socket_error = |source| ProxyError::AdminControl {
        what: "socket",
        path: settings.socket.clone(),
        source,
    };
    let own = admin::control::own_uid().map_err(socket_error)?;
    state.uids = settings.uids.clone().unwrap_or_else(|| vec![own]);
    let listener =
        admin::control::bind(&settings.socket, &state.uids, own).map_err(socket_error)?;
    tracing::info!(socket = %settings.socket.display(), uids = ?state.uids, audit_log = %settings.audit_log.display(), "admin control socket");
    let task = tokio::spawn(admin::control::serve(listener, state, stopped));
    Ok((task, settings.socket.clone()))
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

fn join(expect: &[ExpectedId]) -> String {
    expect
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Keeps the certificate-expiry gauge on the current SVID.
async fn track_expiry(credentials: RotatingCredentials, metrics: Arc<Metrics>) {
    let mut updates = credentials.subscribe();
    loop {
        metrics
            .cert_expiry
            .set(unix_seconds(credentials.expires_at()));
        if updates.changed().await.is_err() {
            return;
        }
    }
}

fn certs_summary(loaded: Arc<OnceLock<RotatingCredentials>>) -> admin::CertsSummary {
    Arc::new(move || {
        let Some(credentials) = loaded.get() else {
            return serde_json::json!({"spiffe_id": null, "status": "no certificate loaded yet"});
        };
        let current = credentials.current();
        let svid = &current.svid;
        serde_json::json!({
            "spiffe_id": svid.spiffe_id().to_string(),
            "not_before": jiff::Timestamp::try_from(svid.not_before()).map(|t| t.to_string()).ok(),
            "not_after": jiff::Timestamp::try_from(svid.not_after()).map(|t| t.to_string()).ok(),
            "chain_length": svid.chain().len(),
            "trust_domains": current.bundles.trust_domains().iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    })
}
