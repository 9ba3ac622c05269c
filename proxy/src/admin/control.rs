//! The admin control surface: `/certs`, `/config`, `GET|DELETE /lockout`, `POST /lockout/clear`,
//! `GET|POST /break-glass`, served only on a Unix socket (`[admin.control] socket`), never on TCP.
//!
//! Who may call is decided by the kernel, not by anything the caller sends: the socket's peer
//! credentials (`SO_PEERCRED`) give the caller's uid, which must be in `[admin.control] uids`.
//! Every call, allowed or refused, is written to the control audit log with who (uid, gid, pid,
//! command), what (method, path) and why (the `reason` a changing call must give) before it takes
//! effect.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::audit::ControlAudit;
use super::{CertsSummary, json, text};
use crate::break_glass::{BreakGlassAdmin, GrantRequest, grant_json};
use crate::lockout::{LockoutGuard, block_json};
use meshguard_policy::lockout::Caller;

/// The largest control request body read (a break-glass grant is a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;

/// What the control endpoints read and change.
#[derive(Clone)]
pub struct ControlState {
    /// Uids allowed to call (checked against the socket's peer credentials).
    pub uids: Vec<u32>,
    /// Where every call is recorded.
    pub audit: ControlAudit,
    /// The `/certs` document.
    pub certs: CertsSummary,
    /// The effective config, secrets redacted.
    pub config: Arc<serde_json::Value>,
    /// Every upstream's endpoints and their states, shown with the config.
    pub upstreams: crate::balance::States,
    /// The lockout table, when `[lockout]` is configured.
    pub lockout: Option<LockoutGuard>,
    /// The break-glass grants file, when `[break_glass]` is configured.
    pub break_glass: Option<Arc<BreakGlassAdmin>>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("uids", &self.uids)
            .field("audit", &self.audit.path())
            .finish_non_exhaustive()
    }
}

/// The caller as the kernel reports it.
#[derive(Clone, Debug)]
struct Operator {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    /// `/proc/PID/comm`, when readable: a name for the record, not a credential.
    command: Option<String>,
}

impl Operator {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"uid": self.uid, "gid": self.gid, "pid": self.pid, "command": self.command})
    }

    fn describe(&self) -> String {
        match (&self.command, self.pid) {
            (Some(command), Some(pid)) => format!("uid {} ({command}, pid {pid})", self.uid),
            _ => format!("uid {}", self.uid),
        }
    }
}

/// Serves the control surface on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    state: ControlState,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(state);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin control accept failed");
                continue;
            }
        };
        let operator = match stream.peer_cred() {
            Ok(cred) => Operator {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
                command: cred.pid().and_then(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .ok()
                        .map(|c| c.trim().to_owned())
                }),
            },
            Err(error) => {
                // Without credentials there is no one to authorize: drop the connection.
                tracing::warn!(%error, "admin control: cannot read the caller's credentials");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                let operator = operator.clone();
                async move { Ok::<_, Infallible>(handle(&state, &operator, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin control connection ended with an error");
            }
        });
    }
}

/// One call, as read: enough to route it and to record it.
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Bytes,
    reason: Option<String>,
}

impl Call {
    /// Whether the call changes state (and so must say why).
    fn changes_state(&self) -> bool {
        self.method != Method::GET
    }
}

async fn handle(
    state: &ControlState,
    operator: &Operator,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {error}\n"),
            );
        }
    };
    let reason = reason_of(&query, &body);
    let call = Call {
        method,
        path,
        query,
        body,
        reason,
    };
    let record = |outcome: &str, status: StatusCode| {
        serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "operator": operator.json(),
            "method": call.method.as_str(),
            "path": call.path,
            "query": call.query,
            "reason": call.reason,
            "outcome": outcome,
            "status": status.as_u16(),
        })
    };

    let refusal = if !state.uids.contains(&operator.uid) {
        Some(text(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not use the admin control socket: add the uid to [admin.control] uids\n",
                operator.describe()
            ),
        ))
    } else if call.changes_state() && call.reason.is_none() {
        Some(text(
            StatusCode::BAD_REQUEST,
            "say why: a call that changes state needs a reason (`?reason=INC-123 ...`, or `reason` in the JSON body)\n"
                .to_owned(),
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        if let Err(error) = state
            .audit
            .record(record("refused", refusal.status()))
            .await
        {
            tracing::error!(%error, audit = %state.audit.path().display(), "cannot write the admin audit log");
        }
        tracing::warn!(operator = %operator.describe(), method = %call.method, path = %call.path, status = %refusal.status(), "admin control call refused");
        return refusal;
    }
    // No record, no action.
    if let Err(error) = state
        .audit
        .record(record("requested", StatusCode::OK))
        .await
    {
        tracing::error!(%error, audit = %state.audit.path().display(), "cannot write the admin audit log; refusing the call");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the admin audit log {} cannot be written ({error}): nothing was done; fix the file or its disk and retry\n",
                state.audit.path().display()
            ),
        );
    }
    let response = route(state, operator, &call).await;
    if call.changes_state() {
        tracing::warn!(operator = %operator.describe(), method = %call.method, path = %call.path, reason = call.reason.as_deref().unwrap_or_default(), status = %response.status(), "admin control call");
    }
    if let Err(error) = state
        .audit
        .record(record("answered", response.status()))
        .await
    {
        tracing::error!(%error, audit = %state.audit.path().display(), "cannot record the answer in the admin audit log");
    }
    response
}

/// The `reason` query parameter, else the `reason` field of a JSON body; blank counts as none.
fn reason_of(query: &str, body: &[u8]) -> Option<String> {
    let from_query = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "reason")
        .map(|(_, value)| value.into_owned());
    let from_body = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .get("reason")?
            .as_str()
            .map(str::to_owned)
    };
    from_query
        .or_else(from_body)
        .filter(|reason| !reason.trim().is_empty())
}

async fn route(state: &ControlState, operator: &Operator, call: &Call) -> Response<Full<Bytes>> {
    match (&call.method, call.path.as_str()) {
        (_, "/lockout" | "/lockout/clear") => lockout(state, call),
        (_, "/break-glass") => break_glass(state, operator, call).await,
        (&Method::GET, "/certs") => json(&(state.certs)()),
        (&Method::GET, "/config") => {
            let mut config = (*state.config).clone();
            let upstreams: Vec<_> = state
                .upstreams
                .get()
                .map(|all| all.iter().map(|u| u.snapshot()).collect())
                .unwrap_or_default();
            config["upstream_state"] = serde_json::Value::Array(upstreams);
            json(&config)
        }
        (_, "/certs" | "/config") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /certs, /config, /lockout or /break-glass\n".to_owned(),
        ),
    }
}

fn lockout(state: &ControlState, call: &Call) -> Response<Full<Bytes>> {
    let Some(guard) = &state.lockout else {
        return text(
            StatusCode::NOT_FOUND,
            "lockout is off: add a [lockout] section to the config to turn it on\n".to_owned(),
        );
    };
    let clearing = match (&call.method, call.path.as_str()) {
        (&Method::GET, "/lockout") => false,
        (&Method::DELETE, "/lockout") | (&Method::POST, "/lockout/clear") => true,
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /lockout, DELETE /lockout?principal=ID|source_ip=IP&reason=... or POST /lockout/clear?...\n"
                    .to_owned(),
            );
        }
    };
    if !clearing {
        let blocks: Vec<_> = guard.list().iter().map(block_json).collect();
        return json(&serde_json::Value::Array(blocks));
    }
    let mut caller = None;
    for (key, value) in form_urlencoded::parse(call.query.as_bytes()) {
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

async fn break_glass(
    state: &ControlState,
    operator: &Operator,
    call: &Call,
) -> Response<Full<Bytes>> {
    let Some(admin) = &state.break_glass else {
        return text(
            StatusCode::NOT_FOUND,
            "break-glass is off: add `[break_glass] file = \"break-glass.toml\"` to the config\n"
                .to_owned(),
        );
    };
    let now = jiff::Timestamp::now();
    match call.method {
        Method::GET => match admin.list(now).await {
            Ok(grants) => json(&grants),
            Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        },
        Method::POST => {
            let mut grant: GrantRequest = match serde_json::from_slice(&call.body) {
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
            // The file records who asked as the kernel saw them, next to what they said.
            let seen = operator.describe();
            grant.issued_by = Some(match grant.issued_by.filter(|w| !w.trim().is_empty()) {
                Some(said) => format!("{said} via {seen}"),
                None => seen,
            });
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

/// The uid this process runs as (the owner of `/proc/self`), the default operator.
pub fn own_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Binds the control socket at `path`, replacing a stale socket left by an earlier run (but never
/// another kind of file). The socket file is owner-only when only the proxy's own uid may call;
/// with other uids allowed it is world-connectable and the peer-credential check is the gate.
pub fn bind(path: &std::path::Path, uids: &[u32], own: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving on this socket; stop it or choose another path",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it or choose another path",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let mode = if uids.iter().all(|&uid| uid == own) {
        0o600
    } else {
        0o666
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path, uids: Vec<u32>) -> ControlState {
        ControlState {
            uids,
            audit: ControlAudit::open(&dir.join("audit.log")).unwrap(),
            certs: Arc::new(|| serde_json::json!({"spiffe_id": "spiffe://td/x"})),
            config: Arc::new(serde_json::json!({"admin": {"listen": "127.0.0.1:15000"}})),
            upstreams: Default::default(),
            lockout: None,
            break_glass: Some(Arc::new(BreakGlassAdmin::new(dir.join("grants.toml")))),
        }
    }

    async fn start(
        dir: &std::path::Path,
        uids: Vec<u32>,
    ) -> (std::path::PathBuf, watch::Sender<bool>) {
        let socket = dir.join("admin.sock");
        let own = own_uid().unwrap();
        let listener = bind(&socket, &uids, own).unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, state(dir, uids), stopped));
        (socket, stop)
    }

    fn audit_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    const GRANT: &str =
        r#"{"principal": "spiffe://td/ns/a/sa/b", "for": "15m", "reason": "INC-1"}"#;

    #[tokio::test]
    async fn a_caller_whose_uid_is_not_listed_is_refused_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let someone_else = own_uid().unwrap().wrapping_add(4242);
        let (socket, _stop) = start(dir.path(), vec![someone_else]).await;
        let answer = super::super::client::call(
            &socket,
            Method::POST,
            "/break-glass",
            Some(GRANT.to_owned()),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert!(
            answer.body.contains("[admin.control] uids"),
            "{}",
            answer.body
        );
        assert!(!dir.path().join("grants.toml").exists());
        let lines = audit_lines(dir.path());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["outcome"], "refused");
        assert_eq!(lines[0]["operator"]["uid"], own_uid().unwrap());
        assert_eq!(lines[0]["reason"], "INC-1");
    }

    #[tokio::test]
    async fn an_allowed_operator_is_recorded_before_and_after_and_must_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _stop) = start(dir.path(), vec![own_uid().unwrap()]).await;
        let call = |method, path: &'static str, body: Option<&str>| {
            let socket = socket.clone();
            let body = body.map(str::to_owned);
            async move {
                super::super::client::call(&socket, method, path, body)
                    .await
                    .unwrap()
            }
        };
        let unexplained = call(
            Method::POST,
            "/break-glass",
            Some(r#"{"principal": "spiffe://td/ns/a/sa/b", "for": "15m", "reason": " "}"#),
        )
        .await;
        assert_eq!(unexplained.status, StatusCode::BAD_REQUEST);
        assert!(unexplained.body.contains("say why"), "{}", unexplained.body);

        let granted = call(Method::POST, "/break-glass", Some(GRANT)).await;
        assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
        // The file names the caller as the kernel saw them.
        let grants = std::fs::read_to_string(dir.path().join("grants.toml")).unwrap();
        assert!(
            grants.contains(&format!("uid {}", own_uid().unwrap())),
            "{grants}"
        );

        assert!(
            call(Method::GET, "/certs", None)
                .await
                .body
                .contains("spiffe://td/x")
        );
        assert!(
            call(Method::GET, "/config", None)
                .await
                .body
                .contains("127.0.0.1:15000")
        );

        let outcomes: Vec<_> = audit_lines(dir.path())
            .iter()
            .map(|l| {
                format!(
                    "{} {} {}",
                    l["method"].as_str().unwrap(),
                    l["path"].as_str().unwrap(),
                    l["outcome"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "POST /break-glass refused",
                "POST /break-glass requested",
                "POST /break-glass answered",
                "GET /certs requested",
                "GET /certs answered",
                "GET /config requested",
                "GET /config answered",
            ]
        );
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_not_replaced_but_a_stale_socket_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        std::fs::write(&path, "not a socket").unwrap();
        let own = own_uid().unwrap();
        assert!(bind(&path, &[own], own).is_err());
        std::fs::remove_file(&path).unwrap();
        drop(bind(&path, &[own], own).unwrap());
        let listener = bind(&path, &[own], own).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(listener);
    }
}
