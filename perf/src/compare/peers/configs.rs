//! The peers' config files, written the way meshguard runs (see the parent module for why each
//! setting is there): TLS 1.3 only, client certificates verified, one worker, keep-alive both ways.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::{MAX_CONNECTIONS, PeerTls, PoolRoute};

/// Failures that take a replica out: meshguard's `failure_threshold = 5`. nginx then keeps it out
/// for `fail_timeout` (1 s, meshguard's first ejection); haproxy until a health check passes.
const FAILURES_TO_EJECT: u32 = 5;
/// Attempts per request including the first: meshguard's `max_attempts = 3`.
const ATTEMPTS: u32 = 3;

/// Connection and file limits the peers get, derived from this process's open-file limit (which
/// they inherit): each proxied connection takes two descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) open_files: u64,
    pub(super) connections: u64,
    /// Run the nginx worker as root when we are root: its default user (`nobody`) could not
    /// enter the 0700 temp directory the harness runs in.
    pub(super) root: bool,
}

impl Limits {
    pub(super) fn of_this_process() -> Limits {
        let me = procfs::process::Process::myself().ok();
        let open_files = me
            .as_ref()
            .and_then(|p| p.limits().ok())
            .map(|limits| match limits.max_open_files.hard_limit {
                procfs::process::LimitValue::Unlimited => 1 << 20,
                procfs::process::LimitValue::Value(n) => n.min(1 << 20),
            })
            .unwrap_or(1024);
        Limits {
            open_files,
            connections: MAX_CONNECTIONS
                .min(open_files.saturating_sub(64) / 2)
                .max(64),
            root: me.and_then(|p| p.uid().ok()) == Some(0),
        }
    }
}

pub(super) fn nginx_config(
    dir: &Path,
    tls: &PeerTls,
    listen: SocketAddr,
    upstream: SocketAddr,
    pool: Option<&PoolRoute>,
    limits: Limits,
    build: &str,
) -> String {
    let d = dir.display();
    let mut temp = format!(
        "    client_body_temp_path {d}/client_body_temp;\n    proxy_temp_path {d}/proxy_temp;\n"
    );
    for module in ["fastcgi", "uwsgi", "scgi"] {
        if !build.contains(&format!("--without-http_{module}_module")) {
            let _ = writeln!(temp, "    {module}_temp_path {d}/{module}_temp;");
        }
    }
    let user = if limits.root { "user root root;\n" } else { "" };
    let tls_server = |listen: SocketAddr| {
        format!(
            "        # backlog as tokio's listeners (meshguard) use.
        listen {listen} ssl backlog=1024;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_client_certificate {bundle};
        ssl_verify_client on;
        ssl_verify_depth 4;
",
            chain = tls.chain.display(),
            key = tls.key.display(),
            bundle = tls.bundle.display(),
        )
    };
    let main_server = tls_server(listen);
    let pool = pool.map_or_else(String::new, |pool| {
        nginx_pool(pool, &tls_server(pool.listen))
    });
    format!(
        "# Written by meshguard perf compare: one worker doing what one meshguard inbound does.
daemon off;
master_process on;
{user}worker_processes 1;
worker_rlimit_nofile {open_files};
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log stderr warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log {d}/access.log combined buffer=64k flush=1s;
{temp}    keepalive_requests 1000000;
    keepalive_timeout 300s;

    upstream meshguard_perf_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}

    server {{
{main_server}
        location / {{
            proxy_pass http://meshguard_perf_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
{pool}}}
",
        open_files = limits.open_files,
        connections = limits.connections,
    )
}

/// The pool route: round robin (nginx's default), a replica out for 1 s after 5 failures within
/// 1 s (`max_fails`/`fail_timeout`, nginx's passive check), and a failed request passed to the next
/// replica on a connect error, a reset or a timeout (`proxy_next_upstream`, which never retries a
/// non-idempotent request that reached a replica), at most 3 tries.
fn nginx_pool(pool: &PoolRoute, tls_server: &str) -> String {
    let servers: String = pool
        .endpoints
        .iter()
        .map(|e| format!("        server {e} max_fails={FAILURES_TO_EJECT} fail_timeout=1s;\n"))
        .collect();
    format!(
        "
    upstream meshguard_perf_pool {{
{servers}        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}

    server {{
{tls_server}
        location / {{
            proxy_pass http://meshguard_perf_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {ATTEMPTS};
        }}
    }}
"
    )
}

pub(super) fn haproxy_config(
    pem: &Path,
    tls: &PeerTls,
    listen: SocketAddr,
    upstream: SocketAddr,
    pool: Option<&PoolRoute>,
    limits: Limits,
) -> String {
    let bind = |listen: SocketAddr| {
        format!(
            "    bind {listen} ssl crt {pem} ca-file {bundle} verify required ssl-min-ver TLSv1.3 \
             curves X25519:P-256 alpn http/1.1\n    maxconn {connections}\n",
            pem = pem.display(),
            bundle = tls.bundle.display(),
            connections = limits.connections,
        )
    };
    let main_bind = bind(listen);
    let pool = pool.map_or_else(String::new, |pool| haproxy_pool(pool, &bind(pool.listen)));
    format!(
        "# Written by meshguard perf compare: one thread doing what one meshguard inbound does.
global
    nbthread 1
    maxconn {connections}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 300s

frontend meshguard_perf
{main_bind}    default_backend meshguard_perf_upstream

backend meshguard_perf_upstream
    server upstream {upstream}
{pool}",
        connections = limits.connections,
    )
}

/// The pool route: round robin (haproxy's default), a replica marked down after 5 consecutive
/// connection errors seen on live traffic (`observe layer4`, haproxy's passive check; the
/// 1 s connect check that comes with it brings it back), and a failed request sent again to another
/// replica (`retry-on` + `option redispatch`) on a connect failure, an empty response or a
/// timeout, at most 3 tries.
fn haproxy_pool(pool: &PoolRoute, bind: &str) -> String {
    let servers: String = pool
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "    server replica-{i} {e} check inter 1s fall {FAILURES_TO_EJECT} rise 1 \
                 observe layer4 error-limit {FAILURES_TO_EJECT} on-error mark-down\n"
            )
        })
        .collect();
    format!(
        "
frontend meshguard_perf_pool
{bind}    default_backend meshguard_perf_pool

backend meshguard_perf_pool
    timeout connect 1s
    retries {retries}
    retry-on conn-failure empty-response response-timeout
    option redispatch 1
{servers}",
        retries = ATTEMPTS - 1,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Accepts plaintext, originates mTLS (a meshguard outbound).
    Client,
    /// Terminates mTLS, connects in plaintext (a meshguard inbound).
    Server,
}

pub(super) fn stunnel_config(
    side: Side,
    tls: &PeerTls,
    accept: SocketAddr,
    connect: SocketAddr,
) -> String {
    let (name, role) = match side {
        Side::Client => ("client", "client = yes\n"),
        Side::Server => ("server", "requireCert = yes\n"),
    };
    format!(
        "; Written by meshguard perf compare: the {name} side of a stunnel pair.
foreground = yes
syslog = no
pid =
debug = notice
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[{name}]
{role}accept = {accept}
connect = {connect}
cert = {chain}
key = {key}
CAfile = {bundle}
verifyChain = yes
sslVersionMin = TLSv1.3
curves = X25519:P-256
",
        chain = tls.chain.display(),
        key = tls.key.display(),
        bundle = tls.bundle.display(),
    )
}
