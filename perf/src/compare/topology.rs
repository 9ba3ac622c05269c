//! The loopback topology of a comparison, built once per run and torn down when dropped: the
//! built-in upstream (plaintext, and a second one behind mTLS for the direct handshake figure),
//! two meshguard sidecars (a client side with outbound listeners, a server side with inbound
//! ones), and each installed peer (nginx, haproxy, a stunnel pair), all separate processes so
//! their CPU time and memory can be read from /proc.
//!
//! Every target gets the same upstream and the same trust domain; each does the work meshguard
//! does in that role (see [`super::peers`] for how each peer is configured to match).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::model::TargetInfo;
use super::peers::{self, PeerKind, PeerTls, PoolRoute};
use super::pki::{Pki, SvidFiles};
use super::pool::{UpstreamPool, spawn_upstream};
use super::process::{Child, free_port, wait_for_port};
use crate::cli::TlsArgs;

/// How long a child may take to start listening (a debug build on a loaded machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An address the generator aims at and how it secures the connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `None`: plaintext. `Some`: TLS with the generator's SVID (mTLS), expecting the server's ID.
    pub tls: Option<TlsArgs>,
}

impl Endpoint {
    /// The URL the HTTP modes take.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }
}

/// One thing compared, with the entry points each scenario uses (absent: not in that scenario).
#[derive(Debug, Clone)]
pub struct Target {
    pub key: &'static str,
    /// Keep-alive and latency-at-rate HTTP/1.1 requests.
    pub http: Option<Endpoint>,
    /// New mTLS connection + one request each.
    pub handshake: Option<Endpoint>,
    /// One TCP stream, plaintext at the entry (the L4 path behind it).
    pub bulk: Option<Endpoint>,
    /// Idle mTLS connections (after one request each).
    pub idle: Option<Endpoint>,
    /// Open-loop requests to a route over the three replicas of [`UpstreamPool`].
    pub resilience: Option<Endpoint>,
    /// Processes whose CPU time and memory are the target's cost (none for direct).
    pub pids: Vec<u32>,
    /// Their resident memory right after start, before any load (filled in by the caller).
    pub startup_rss: Option<u64>,
}

/// The running topology. Dropping it stops every child.
#[derive(Debug)]
pub struct Topology {
    pub targets: Vec<Target>,
    /// Every target considered, including skipped ones with the reason.
    pub infos: Vec<TargetInfo>,
    /// The replicas behind every target's multi-endpoint route (the resilience scenario).
    pub pool: UpstreamPool,
    children: Vec<Child>,
}

/// What `build` needs to know.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// The `meshguard` binary under test.
    pub meshguard: PathBuf,
    /// Scratch directory: certificates, configs, logs.
    pub dir: PathBuf,
    /// Peers to try (each skipped with a reason when not installed).
    pub peers: Vec<PeerKind>,
    /// Worker threads per proxy (meshguard `--threads`; peers run one worker either way).
    pub proxy_threads: u16,
}

impl Topology {
    /// Starts everything and waits until each listener accepts connections.
    pub fn build(options: &TopologyOptions) -> anyhow::Result<Topology> {
        let dir = &options.dir;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("could not create {}", logs.display()))?;
        let pki = Pki::create(&dir.join("pki"))?;
        let client = pki.issue("load-generator")?;
        let mut topology = Topology {
            targets: Vec::new(),
            infos: Vec::new(),
            pool: UpstreamPool::start(&options.meshguard, &logs)?,
            children: Vec::new(),
        };

        // The upstream: plaintext for the proxies, and one behind mTLS for "direct" handshakes.
        let upstream = topology.spawn_upstream(options, &logs, None)?;
        let upstream_svid = pki.issue("upstream")?;
        let upstream_tls = topology.spawn_upstream(options, &logs, Some(&upstream_svid))?;
        topology.targets.push(Target {
            key: "direct",
            http: Some(plain(upstream)),
            handshake: Some(mtls(upstream_tls, &client, &upstream_svid)),
            bulk: Some(plain(upstream)),
            idle: None,
            resilience: None,
            pids: Vec::new(),
            startup_rss: None,
        });
        topology.infos.push(TargetInfo {
            key: "direct".into(),
            description: "the built-in upstream (`meshguard perf upstream`, 1 thread) with no proxy; \
                          for handshakes, the same upstream serving mTLS itself (rustls, X25519MLKEM768)"
                .into(),
            skipped: None,
        });

        topology.start_meshguard(options, &pki, &client, upstream)?;
        for &kind in &options.peers {
            topology.start_peer(kind, options, &pki, &client, upstream)?;
        }
        Ok(topology)
    }

    fn spawn_upstream(
        &mut self,
        options: &TopologyOptions,
        logs: &Path,
        tls: Option<&SvidFiles>,
    ) -> anyhow::Result<SocketAddr> {
        let addr = free_port()?;
        let name = if tls.is_some() {
            "upstream-mtls"
        } else {
            "upstream"
        };
        let child = spawn_upstream(&options.meshguard, logs, name, addr, tls)?;
        self.children.push(child);
        Ok(addr)
    }

    /// Two meshguard processes: `sidecar-in` (inbound HTTP and TCP listeners in front of the
    /// upstream, and an HTTP one balancing over the pool) and `sidecar-out` (outbound HTTP and TCP listeners towards `sidecar-in`).
    fn start_meshguard(
        &mut self,
        options: &TopologyOptions,
        pki: &Pki,
        client: &SvidFiles,
        upstream: SocketAddr,
    ) -> anyhow::Result<()> {
        let dir = options.dir.join("meshguard");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let inbound_svid = pki.issue("meshguard-inbound")?;
        let outbound_svid = pki.issue("meshguard-outbound")?;
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            policy_toml(&[&client.spiffe_id, &outbound_svid.spiffe_id]),
        )
        .with_context(|| format!("could not write {}", policy.display()))?;

        let (in_http, in_tcp, in_pool) = (free_port()?, free_port()?, free_port()?);
        let to_upstream = format!("forward_to = \"{upstream}\"");
        let config = sidecar_config(&inbound_svid, free_port()?, &dir.join("inbound-access.log"))
            + &listener(
                "inbound",
                "http",
                in_http,
                &to_upstream,
                Some(&policy),
                None,
            )
            + &listener("inbound", "tcp", in_tcp, &to_upstream, Some(&policy), None)
            + &listener(
                "inbound-pool",
                "http",
                in_pool,
                &pool_upstream(&self.pool.addrs()),
                Some(&policy),
                None,
            );
        let inbound = self.spawn_sidecar(
            options,
            &dir,
            "sidecar-in",
            &config,
            &[in_http, in_tcp, in_pool],
        )?;

        let (out_http, out_tcp) = (free_port()?, free_port()?);
        let expect = Some(inbound_svid.spiffe_id.as_str());
        let config = sidecar_config(
            &outbound_svid,
            free_port()?,
            &dir.join("outbound-access.log"),
        ) + &listener(
            "outbound",
            "http",
            out_http,
            &format!("target = \"{in_http}\""),
            None,
            expect,
        ) + &listener(
            "outbound",
            "tcp",
            out_tcp,
            &format!("target = \"{in_tcp}\""),
            None,
            expect,
        );
        let outbound =
            self.spawn_sidecar(options, &dir, "sidecar-out", &config, &[out_http, out_tcp])?;

        self.targets.push(Target {
            key: "meshguard-pair",
            http: Some(plain(out_http)),
            handshake: None,
            bulk: Some(plain(out_tcp)),
            idle: None,
            resilience: None,
            pids: vec![outbound, inbound],
            startup_rss: None,
        });
        self.targets.push(Target {
            key: "meshguard-inbound",
            http: Some(mtls(in_http, client, &inbound_svid)),
            handshake: Some(mtls(in_http, client, &inbound_svid)),
            bulk: None,
            idle: Some(mtls(in_http, client, &inbound_svid)),
            resilience: Some(mtls(in_pool, client, &inbound_svid)),
            pids: vec![inbound],
            startup_rss: None,
        });
        let threads = options.proxy_threads;
        self.infos.push(TargetInfo {
            key: "meshguard-pair".into(),
            description: format!(
                "client -> meshguard outbound -> mTLS (HTTP/2 pooled for HTTP, one TLS stream per \
                 TCP connection) -> meshguard inbound -> upstream; {threads} worker thread(s) each, \
                 per-request policy and access log on; CPU of both sidecars counted"
            ),
            skipped: None,
        });
        self.infos.push(TargetInfo {
            key: "meshguard-inbound".into(),
            description: format!(
                "mTLS client -> meshguard inbound (TLS 1.3, X25519MLKEM768, SPIFFE client \
                 certificate verified, per-request policy, access log on) -> upstream; \
                 {threads} worker thread(s)"
            ),
            skipped: None,
        });
        Ok(())
    }

    fn spawn_sidecar(
        &mut self,
        options: &TopologyOptions,
        dir: &Path,
        name: &str,
        config: &str,
        listeners: &[SocketAddr],
    ) -> anyhow::Result<u32> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)
            .with_context(|| format!("could not write {}", path.display()))?;
        let mut command = Command::new(&options.meshguard);
        command.arg("proxy").arg("--config").arg(&path);
        command.args(["--threads", &options.proxy_threads.to_string()]);
        command.env("RUST_LOG", "warn").env("NO_COLOR", "1");
        let mut child = Child::spawn(name, command, &options.dir.join("logs"))?;
        for &addr in listeners {
            wait_for_port(&mut child, addr, START_TIMEOUT)?;
        }
        let pid = child.pid();
        self.children.push(child);
        Ok(pid)
    }

    fn start_peer(
        &mut self,
        kind: PeerKind,
        options: &TopologyOptions,
        pki: &Pki,
        client: &SvidFiles,
        upstream: SocketAddr,
    ) -> anyhow::Result<()> {
        let available = match kind.find() {
            Ok(available) => available,
            Err(reason) => {
                self.infos.push(TargetInfo {
                    key: kind.key().into(),
                    description: String::new(),
                    skipped: Some(reason),
                });
                return Ok(());
            }
        };
        let svid = pki.issue(kind.key())?;
        let tls = PeerTls {
            chain: svid.chain.clone(),
            key: svid.key.clone(),
            bundle: svid.bundle.clone(),
        };
        let dir = options.dir.join(kind.key());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let listen = free_port()?;
        // stunnel has no HTTP balancing with retries; it stays out of the resilience scenario.
        let pool = match kind {
            PeerKind::StunnelPair => None,
            PeerKind::Nginx | PeerKind::Haproxy => Some(PoolRoute {
                listen: free_port()?,
                endpoints: self.pool.addrs(),
            }),
        };
        let children = peers::start(&available, &dir, &tls, listen, upstream, pool.as_ref())
            .with_context(|| format!("could not start {}", kind.key()))?;
        let pids: Vec<u32> = children.iter().map(Child::pid).collect();
        self.children.extend(children);
        let target = match kind {
            PeerKind::StunnelPair => Target {
                key: kind.key(),
                http: None,
                handshake: None,
                bulk: Some(plain(listen)),
                idle: None,
                resilience: None,
                pids,
                startup_rss: None,
            },
            PeerKind::Nginx | PeerKind::Haproxy => Target {
                key: kind.key(),
                http: Some(mtls(listen, client, &svid)),
                handshake: Some(mtls(listen, client, &svid)),
                bulk: None,
                idle: Some(mtls(listen, client, &svid)),
                resilience: pool.map(|p| mtls(p.listen, client, &svid)),
                pids,
                startup_rss: None,
            },
        };
        self.targets.push(target);
        self.infos.push(TargetInfo {
            key: kind.key().into(),
            description: kind.describe(&available),
            skipped: None,
        });
        Ok(())
    }

    /// Errors when any child has exited (a crashed proxy must not look like a slow one); a
    /// replica killed on purpose is not counted.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.children.iter_mut().try_for_each(Child::check_alive)?;
        self.pool.check_alive()
    }
}

fn plain(addr: SocketAddr) -> Endpoint {
    Endpoint { addr, tls: None }
}

fn mtls(addr: SocketAddr, client: &SvidFiles, server: &SvidFiles) -> Endpoint {
    Endpoint {
        addr,
        tls: Some(TlsArgs {
            cert: Some(client.chain.clone()),
            key: Some(client.key.clone()),
            bundle: Some(client.bundle.clone()),
            expect_id: Some(server.spiffe_id.clone()),
        }),
    }
}

/// Allows the load generator and the client-side sidecar, nobody else (default deny).
pub(crate) fn policy_toml(principals: &[&str]) -> String {
    let list = principals
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# perf compare: the load generator and the client-side sidecar may call the upstream.\n\
         [[policy]]\nname = \"perf-clients\"\naction = \"allow\"\nprincipals = [{list}]\n"
    )
}

/// The part of a sidecar config every sidecar shares. Keep-alive limits are raised so the
/// proxy never closes a connection in the middle of a measured run.
pub(crate) fn sidecar_config(svid: &SvidFiles, admin: SocketAddr, access_log: &Path) -> String {
    format!(
        "[identity]\nfiles = {{ cert = {:?}, key = {:?}, bundle = {:?} }}\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [access_log]\npath = {:?}\n\n\
         [http]\nidle_timeout = \"10m\"\n",
        svid.chain, svid.key, svid.bundle, access_log
    )
}

/// The pool as a multi-endpoint upstream with meshguard's defaults: P2C over peak-EWMA,
/// ejection after 5 consecutive failures, retries of idempotent requests within the budget.
fn pool_upstream(endpoints: &[SocketAddr]) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("upstream = {{ endpoints = [{list}], balancer = \"p2c-ewma\" }}")
}

/// One `[[inbound]]` or `[[outbound]]` table; `name` is its name and `to` its destination line
/// (`forward_to = "..."`, `target = "..."` or `upstream = { ... }`).
pub(crate) fn listener(
    name: &str,
    protocol: &str,
    listen: SocketAddr,
    to: &str,
    policy: Option<&Path>,
    expect: Option<&str>,
) -> String {
    let table = if name.starts_with("inbound") {
        "inbound"
    } else {
        "outbound"
    };
    let mut s = format!(
        "\n[[{table}]]\nname = \"{name}-{protocol}\"\nlisten = \"{listen}\"\n\
         {to}\nprotocol = \"{protocol}\"\n"
    );
    if let Some(policy) = policy {
        s += &format!("policy = {policy:?}\n");
    }
    if let Some(expect) = expect {
        s += &format!("expect = [{expect:?}]\n");
    }
    s
}
