//! The proxy's config file: TOML parsed into validated types. Unknown keys, bad values and broken
//! rules are reported as `FILE:LINE:COLUMN: message`; relative paths are resolved against the
//! directory of the config file, so a config can be moved together with its certificates.

mod upstream;
mod values;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use meshguard_policy::decision_log::OnFull;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use upstream::{Balancer, UpstreamConfig};
pub use values::{Cidr, ExpectedId, HumanDuration, Target};

/// The whole validated configuration of one proxy process.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Where the workload's credentials come from.
    pub identity: IdentitySourceConfig,
    /// The admin server.
    pub admin: AdminConfig,
    /// The per-connection access log.
    pub access_log: AccessLogConfig,
    /// The policy decision log (denies, audits, dry-runs), when wanted.
    pub decision_log: Option<DecisionLogConfig>,
    /// mTLS listeners from the mesh to the local app (or a legacy host).
    pub inbound: Vec<InboundConfig>,
    /// Plaintext listeners from the local app (or legacy clients) to a peer over mTLS.
    pub outbound: Vec<OutboundConfig>,
    /// The transparent outbound listener fed by iptables REDIRECT.
    pub transparent: Option<TransparentConfig>,
    /// Connect, handshake, idle and drain timeouts.
    pub timeouts: Timeouts,
    /// Limits and timeouts of `http` and `detect` listeners.
    pub http: crate::http::settings::HttpConfig,
    /// Temporary blocks after repeated denials or failed handshakes; off when absent.
    pub lockout: Option<crate::lockout::LockoutSettings>,
    /// The break-glass grants file every inbound policy loads (and `POST /break-glass` writes).
    pub break_glass: Option<BreakGlassConfig>,
}

/// The `[break_glass]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    /// The grants file (TOML `[[grant]]` tables); a missing file holds no grants.
    pub file: PathBuf,
}

/// Exactly one identity source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawIdentity", rename_all = "snake_case")]
pub enum IdentitySourceConfig {
    /// SVID, key and bundle PEM files, watched for changes.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8 private key.
        key: PathBuf,
        /// Trust bundle.
        bundle: PathBuf,
    },
    /// The meshguard CA's issuance API, bootstrapped with a one-time token.
    Ca {
        /// The CA's issuance API.
        url: String,
        /// The SPIFFE ID to request.
        spiffe_id: meshguard_identity::SpiffeId,
        /// File holding the bootstrap token.
        token_file: PathBuf,
        /// The CA's bundle, to authenticate the CA.
        bundle: PathBuf,
    },
    /// A SPIFFE Workload API endpoint such as a SPIRE agent (`unix:///path`).
    WorkloadApi(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    files: Option<RawFiles>,
    ca: Option<RawCa>,
    workload_api: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    url: String,
    spiffe_id: meshguard_identity::SpiffeId,
    token_file: PathBuf,
    bundle: PathBuf,
}

impl TryFrom<RawIdentity> for IdentitySourceConfig {
    type Error = String;
    fn try_from(raw: RawIdentity) -> Result<Self, String> {
        let count = [
            raw.files.is_some(),
            raw.ca.is_some(),
            raw.workload_api.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if count != 1 {
            return Err(format!(
                "[identity] needs exactly one source (files, ca or workload_api); {count} are set"
            ));
        }
        if let Some(f) = raw.files {
            return Ok(Self::Files {
                cert: f.cert,
                key: f.key,
                bundle: f.bundle,
            });
        }
        if let Some(ca) = raw.ca {
            return Ok(Self::Ca {
                url: ca.url,
                spiffe_id: ca.spiffe_id,
                token_file: ca.token_file,
                bundle: ca.bundle,
            });
        }
        let endpoint = raw.workload_api.unwrap_or_default();
        if !endpoint.starts_with("unix://") {
            return Err(format!(
                "workload_api `{endpoint}` must be a Unix socket address like `unix:///run/spire/agent.sock`"
            ));
        }
        Ok(Self::WorkloadApi(endpoint))
    }
}

/// The admin server: probes on TCP, the control surface on a Unix socket when configured.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The probe listener (`/live`, `/ready`, `/metrics`; nothing that changes state). Loopback by
    /// default; a pod IP is fine for a kubelet's probes.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The control surface (`/certs`, `/config`, lockout, break-glass); off when absent.
    #[serde(default)]
    pub control: Option<AdminControlConfig>,
}

/// `[admin.control]`: the operator's surface, on a Unix socket only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminControlConfig {
    /// The socket's path (replaced at start when a stale socket is left there).
    pub socket: PathBuf,
    /// Uids allowed to call, checked against the socket's peer credentials. Default: the proxy's
    /// own uid only.
    #[serde(default)]
    pub uids: Option<Vec<u32>>,
    /// Every control call is appended here (JSON lines, fsync'd) before it takes effect.
    pub audit_log: PathBuf,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            control: None,
        }
    }
}

/// The per-connection access log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file (appended to), or `-` for stdout.
    #[serde(default = "default_access_log_path")]
    pub path: PathBuf,
    /// Lines held in memory while the writer catches up.
    #[serde(default = "default_access_log_queue")]
    pub queue: usize,
    /// A full queue: `drop` (default: connections never wait; dropped lines are counted and
    /// logged) or `block` (the connection's end waits for room; no line is lost).
    #[serde(default = "default_access_log_on_full")]
    pub on_full: OnFull,
}

fn default_access_log_on_full() -> OnFull {
    OnFull::Drop
}

fn default_access_log_path() -> PathBuf {
    PathBuf::from("-")
}

fn default_access_log_queue() -> usize {
    8192
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            path: default_access_log_path(),
            queue: default_access_log_queue(),
            on_full: default_access_log_on_full(),
        }
    }
}

/// The policy decision log: one JSON line per deny, audit and dry-run match, with the policy
/// revision, written by a background thread.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// A file (appended to).
    pub path: PathBuf,
    /// Lines held in memory while the writer catches up.
    #[serde(default = "default_access_log_queue")]
    pub queue: usize,
    /// A full queue: `block` (default: the request waits for room, no decision is lost) or
    /// `drop` (counted in `meshguard_decision_log_dropped_total` and logged).
    #[serde(default)]
    pub on_full: OnFull,
    /// Header names whose values are redacted in the input summary.
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

/// What a listener speaks to its application side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Opaque TCP.
    Tcp,
    /// HTTP/1.1 and HTTP/2 (the L7 proxy).
    Http,
    /// Detect HTTP, else opaque TCP (the L7 proxy).
    Detect,
}

/// An mTLS listener: terminates mTLS, authorizes the peer, forwards to `forward_to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// A name for logs and metrics; defaults to `inbound:<listen>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Address to accept mTLS connections on.
    pub listen: SocketAddr,
    /// The local app, or a legacy host when this proxy is a gateway: `forward_to = "HOST:PORT"`,
    /// or `upstream = { endpoints = [...] }` for several replicas.
    #[serde(alias = "forward_to", deserialize_with = "upstream::deserialize")]
    pub upstream: UpstreamConfig,
    /// `tcp` (this build), `http` or `detect`.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// The policy file deciding which peers may connect (default deny).
    pub policy: PathBuf,
    /// TLS towards `forward_to` (a gateway's legacy host); plain TCP when absent.
    #[serde(default)]
    pub forward_tls: Option<crate::legacy_tls::ForwardTls>,
    /// Open connections beyond which new ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// A plaintext listener: accepts from the app, originates mTLS to `target`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// A name for logs and metrics; defaults to `outbound:<listen>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Address to accept plaintext connections on.
    pub listen: SocketAddr,
    /// The peer's inbound mTLS listener: `target = "HOST:PORT"`, or
    /// `upstream = { endpoints = [...] }` for several peer sidecars.
    #[serde(alias = "target", deserialize_with = "upstream::deserialize")]
    pub upstream: UpstreamConfig,
    /// SPIFFE IDs the peer may present; anything else is refused.
    pub expect: Vec<ExpectedId>,
    /// Server name sent in the TLS ClientHello (SNI); defaults to the target's host name.
    #[serde(default)]
    pub sni: Option<String>,
    /// Server-side TLS for the (legacy) clients of this listener; plain TCP when absent.
    #[serde(default)]
    pub listen_tls: Option<crate::legacy_tls::ListenTls>,
    /// `tcp` (this build), `http` or `detect`.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Open connections beyond which new ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// The transparent listener: connections redirected by iptables, routed by original destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Address iptables redirects outbound connections to.
    pub listen: SocketAddr,
    /// Destinations with no route: denied (the default) or passed through unchanged, and logged.
    #[serde(default)]
    pub passthrough: bool,
    /// Routes, most specific first (longest prefix, then a port match beats any port).
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// Open connections beyond which new ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// One transparent route: destinations it covers, and the sidecar that serves them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Original destinations covered.
    pub destination: Cidr,
    /// Original destination ports covered; absent means any port.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// A fixed peer sidecar, or absent to dial the original address at `target_port`.
    #[serde(default)]
    pub target: Option<Target>,
    /// The peer sidecar's inbound port on the original address (when `target` is absent).
    #[serde(default)]
    pub target_port: Option<u16>,
    /// SPIFFE IDs the peer may present.
    pub expect: Vec<ExpectedId>,
    /// SNI to send; defaults to none for addresses.
    #[serde(default)]
    pub sni: Option<String>,
}

/// Timeouts shared by all listeners.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to an upstream.
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    /// A TLS handshake, either side.
    #[serde(default = "default_handshake")]
    pub handshake: HumanDuration,
    /// A connection with no bytes either way for this long is closed.
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
    /// On SIGTERM, how long open connections may drain before the process exits.
    #[serde(default = "default_drain")]
    pub drain_grace: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            handshake: default_handshake(),
            idle: default_idle(),
            drain_grace: default_drain(),
        }
    }
}

fn default_connect() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_handshake() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_idle() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_drain() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_max_connections() -> usize {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    identity: Spanned<IdentitySourceConfig>,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    access_log: AccessLogConfig,
    #[serde(default)]
    decision_log: Option<DecisionLogConfig>,
    #[serde(default)]
    inbound: Vec<Spanned<InboundConfig>>,
    #[serde(default)]
    outbound: Vec<Spanned<OutboundConfig>>,
    #[serde(default)]
    transparent: Option<Spanned<TransparentConfig>>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    http: crate::http::settings::HttpConfig,
    #[serde(default)]
    lockout: Option<Spanned<crate::lockout::LockoutSettings>>,
    #[serde(default)]
    break_glass: Option<BreakGlassConfig>,
}

/// A config file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid config; `line` and `column` are 1-based.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Line of the offending key or value.
        line: usize,
        /// Column of the offending key or value.
        column: usize,
        /// What is wrong and what to write instead.
        message: String,
    },
}

// === impl Config ===

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));

        if let Some(lockout) = &raw.lockout {
            lockout
                .get_ref()
                .validate()
                .map_err(|message| invalid(Some(lockout.span()), message))?;
        }
        for inbound in &raw.inbound {
            if inbound.get_ref().forward_tls.is_some()
                && inbound.get_ref().protocol != Protocol::Tcp
            {
                return Err(invalid(
                    Some(inbound.span()),
                    "`forward_tls` works with `protocol = \"tcp\"` only in this build".to_owned(),
                ));
            }
        }
        for outbound in &raw.outbound {
            if outbound.get_ref().listen_tls.is_some()
                && outbound.get_ref().protocol != Protocol::Tcp
            {
                return Err(invalid(
                    Some(outbound.span()),
                    "`listen_tls` works with `protocol = \"tcp\"` only in this build".to_owned(),
                ));
            }
            if outbound.get_ref().expect.is_empty() {
                return Err(invalid(
                    Some(outbound.span()),
                    "an [[outbound]] needs `expect = [\"spiffe://...\"]`: the peer's identity is always checked".to_owned(),
                ));
            }
        }
        if let Some(transparent) = &raw.transparent {
            for route in &transparent.get_ref().route {
                if route.target.is_some() == route.target_port.is_some() {
                    return Err(invalid(
                        Some(transparent.span()),
                        format!(
                            "route for {} needs exactly one of `target` or `target_port`",
                            String::from(route.destination)
                        ),
                    ));
                }
                if route.expect.is_empty() {
                    return Err(invalid(
                        Some(transparent.span()),
                        format!(
                            "route for {} needs `expect = [\"spiffe://...\"]`",
                            String::from(route.destination)
                        ),
                    ));
                }
            }
        }
        let mut listens: Vec<(SocketAddr, Range<usize>)> = Vec::new();
        let mut check_listen = |addr: SocketAddr, span: Range<usize>| {
            if let Some((_, _)) = listens
                .iter()
                .find(|(other, _)| *other == addr && addr.port() != 0)
            {
                return Err(invalid(
                    Some(span),
                    format!("{addr} is used by two listeners"),
                ));
            }
            listens.push((addr, span));
            Ok(())
        };
        for l in &raw.inbound {
            check_listen(l.get_ref().listen, l.span())?;
        }
        for l in &raw.outbound {
            check_listen(l.get_ref().listen, l.span())?;
        }
        if let Some(t) = &raw.transparent {
            check_listen(t.get_ref().listen, t.span())?;
        }

        let mut config = Self {
            identity: raw.identity.into_inner(),
            admin: raw.admin,
            access_log: raw.access_log,
            decision_log: raw.decision_log,
            inbound: raw.inbound.into_iter().map(Spanned::into_inner).collect(),
            outbound: raw.outbound.into_iter().map(Spanned::into_inner).collect(),
            transparent: raw.transparent.map(Spanned::into_inner),
            timeouts: raw.timeouts,
            http: raw.http,
            lockout: raw.lockout.map(Spanned::into_inner),
            break_glass: raw.break_glass,
        };
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        match &mut self.identity {
            IdentitySourceConfig::Files { cert, key, bundle } => {
                resolve(cert);
                resolve(key);
                resolve(bundle);
            }
            IdentitySourceConfig::Ca {
                token_file, bundle, ..
            } => {
                resolve(token_file);
                resolve(bundle);
            }
            IdentitySourceConfig::WorkloadApi(_) => {}
        }
        resolve(&mut self.access_log.path);
        if let Some(control) = &mut self.admin.control {
            resolve(&mut control.socket);
            resolve(&mut control.audit_log);
        }
        if let Some(decision_log) = &mut self.decision_log {
            resolve(&mut decision_log.path);
        }
        if let Some(break_glass) = &mut self.break_glass {
            resolve(&mut break_glass.file);
        }
        for inbound in &mut self.inbound {
            resolve(&mut inbound.policy);
            if let Some(tls) = &mut inbound.forward_tls {
                resolve(&mut tls.ca);
            }
        }
        for outbound in &mut self.outbound {
            if let Some(tls) = &mut outbound.listen_tls {
                resolve(&mut tls.cert);
                resolve(&mut tls.key);
            }
        }
    }

    /// The effective config as JSON for the admin `/config` endpoint. The config holds paths to
    /// key and token files, never their contents; the token file path is shown, its content never read here.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() }))
    }
}

impl InboundConfig {
    /// The listener's name in logs and metrics.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("inbound:{}", self.listen))
    }
}

impl OutboundConfig {
    /// The listener's name in logs and metrics.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("outbound:{}", self.listen))
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
