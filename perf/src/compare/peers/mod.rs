//! The peer proxies `perf compare` measures meshguard against: nginx and haproxy as mTLS-terminating
//! HTTP proxies (the work of one meshguard inbound) and a pair of stunnel processes (the L4 shape of
//! a meshguard sidecar pair).
//!
//! A comparison is only fair when every proxy does the same work, so each is configured the way
//! meshguard runs: TLS 1.3 only, the client certificate required and verified against the trust
//! bundle, one worker (meshguard is compared per core), HTTP/1.1 keep-alive on both sides with the
//! upstream connections reused, limits raised so nothing closes connections under load, and a
//! request log where the peer has one. What cannot be matched is said in [`PeerKind::describe`]:
//! OpenSSL 3.0 has no X25519MLKEM768, so the peers negotiate plain X25519, which is cheaper.
//!
//! Nothing is read from or written to /etc or /var: configs, pid, temp and log files live in the
//! directory the caller gives, so the peers run without root and leave nothing behind.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::process::{Child, free_port, wait_for_port};

mod configs;

use configs::{Limits, Side, haproxy_config, nginx_config, stunnel_config};

/// How long a peer has to start listening: they start in milliseconds, but a loaded CI box is slow.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The most connections a peer is told to accept (nginx `worker_connections`, haproxy `maxconn`).
const MAX_CONNECTIONS: u64 = 20_000;

/// A proxy meshguard is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Nginx,
    Haproxy,
    /// Two stunnel processes: plaintext in -> client side -> mTLS -> server side -> upstream.
    StunnelPair,
}

/// TLS material as PEM files: the certificate chain (leaf first) and its PKCS#8 key, used as the
/// server certificate (and by stunnel's client side as its client certificate), and the trust
/// bundle (root CA) client certificates are verified against.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// A second route through the same peer process, balancing over several replicas with the
/// peer's own passive failure detection and retry of the next replica: what meshguard's
/// multi-endpoint `upstream` does (see [`configs`] for the directives).
#[derive(Debug, Clone)]
pub struct PoolRoute {
    /// Where the route listens (mTLS, configured like the main listener).
    pub listen: SocketAddr,
    pub endpoints: Vec<SocketAddr>,
}

/// A peer found on this machine.
#[derive(Debug, Clone)]
pub struct Available {
    pub kind: PeerKind,
    pub binary: PathBuf,
    /// Its version and the OpenSSL it runs with, e.g. `1.22.1 (OpenSSL 3.0.22)`.
    pub version: String,
}

// === impl PeerKind ===

impl PeerKind {
    /// Every peer, in report order.
    pub const ALL: [PeerKind; 3] = [PeerKind::Nginx, PeerKind::Haproxy, PeerKind::StunnelPair];

    /// The stable target key used in reports.
    pub fn key(self) -> &'static str {
        match self {
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
            PeerKind::StunnelPair => "stunnel-pair",
        }
    }

    /// Executable names, most specific first (Debian ships `stunnel4` with `stunnel` as a link).
    fn binaries(self) -> &'static [&'static str] {
        match self {
            PeerKind::Nginx => &["nginx"],
            PeerKind::Haproxy => &["haproxy"],
            PeerKind::StunnelPair => &["stunnel4", "stunnel"],
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            PeerKind::Nginx => "apt-get install nginx-light",
            PeerKind::Haproxy => "apt-get install haproxy",
            PeerKind::StunnelPair => "apt-get install stunnel4",
        }
    }

    /// Finds the binary on PATH or in /usr/sbin, /usr/bin (nginx and haproxy live in /usr/sbin,
    /// which is not on every user's PATH) and asks it for its version. The error is a sentence for
    /// the report saying why the peer is skipped and how to install it.
    pub fn find(self) -> Result<Available, String> {
        let binary = self
            .binaries()
            .iter()
            .find_map(|name| locate(name))
            .ok_or_else(|| {
                format!(
                    "{} is not installed ({})",
                    self.binaries()[0],
                    self.install_hint()
                )
            })?;
        let flag = match self {
            PeerKind::Nginx => "-V",
            PeerKind::Haproxy => "-vv",
            PeerKind::StunnelPair => "-version",
        };
        let output = Command::new(&binary)
            .arg(flag)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| format!("{} cannot be run: {error}", binary.display()))?;
        // nginx and stunnel print their versions on stderr, haproxy on stdout.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let version = parse_version(self, &text).ok_or_else(|| {
            format!(
                "{} {flag} did not print a version with TLS support: is it built with OpenSSL?",
                binary.display()
            )
        })?;
        Ok(Available {
            kind: self,
            binary,
            version,
        })
    }

    /// One line for the report: what ran and how it was configured, including where it differs
    /// from meshguard.
    pub fn describe(self, available: &Available) -> String {
        const KEX: &str = "X25519 key exchange (OpenSSL 3.0 has no X25519MLKEM768, which \
                           meshguard negotiates and which costs more)";
        let version = &available.version;
        match self {
            PeerKind::Nginx => format!(
                "nginx {version}, 1 worker, TLS 1.3 only, {KEX}, client certificate required and \
                 verified against the bundle, HTTP/1.1 keep-alive from clients, keep-alive to the \
                 upstream (64 idle connections kept), access log on (64 KiB buffer, flushed every \
                 second, like meshguard's)"
            ),
            PeerKind::Haproxy => format!(
                "haproxy {version}, 1 thread, TLS 1.3 only, {KEX}, client certificate required and \
                 verified against the bundle, HTTP mode, HTTP/1.1 keep-alive from clients, \
                 upstream connections reused (http-reuse always), no log target (haproxy logs \
                 through syslog or stdout, left off; meshguard writes an access log)"
            ),
            PeerKind::StunnelPair => format!(
                "stunnel {version} pair (plaintext -> client side -> mTLS -> server side -> \
                 upstream, the shape of a meshguard sidecar pair), L4 only, TLS 1.3 only, {KEX}, \
                 certificates required and chains verified on both sides (no identity check), \
                 TLS session resumption on (stunnel's default), a thread per connection, \
                 TCP_NODELAY, a log line per connection"
            ),
        }
    }
}

/// Writes the peer's config into `dir` and starts it; returns once `listen` accepts connections.
/// The processes are the caller's: sample them with `procstat::usage` over their pids, drop them
/// to stop them. A peer that exits at start gives an error naming it and quoting its log.
pub fn start(
    available: &Available,
    dir: &Path,
    tls: &PeerTls,
    listen: SocketAddr,
    upstream: SocketAddr,
    pool: Option<&PoolRoute>,
) -> anyhow::Result<Vec<Child>> {
    anyhow::ensure!(
        pool.is_none() || available.kind != PeerKind::StunnelPair,
        "a stunnel pair forwards bytes to one address: it cannot serve a pool route"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let limits = Limits::of_this_process();
    // Starts `binary args..` as `name`, its log in `dir`, and waits until `port` accepts.
    let launch = |name: &str, args: Vec<&OsStr>, port: SocketAddr| -> anyhow::Result<Child> {
        let mut command = Command::new(&available.binary);
        command.args(args);
        let mut child = Child::spawn(name, command, dir)?;
        wait_for_port(&mut child, port, START_TIMEOUT)?;
        if let Some(pool) = pool {
            wait_for_port(&mut child, pool.listen, START_TIMEOUT)?;
        }
        Ok(child)
    };
    match available.kind {
        PeerKind::Nginx => {
            // Modules compiled out (nginx-light drops some) reject their temp path directive;
            // modules compiled in create their temp directory under /var unless told otherwise.
            let build = Command::new(&available.binary)
                .arg("-V")
                .output()
                .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
                .unwrap_or_default();
            let config = nginx_config(dir, tls, listen, upstream, pool, limits, &build);
            let path = write(dir, "nginx.conf", &config)?;
            let mut args = vec![
                "-p".as_ref(),
                dir.as_os_str(),
                "-c".as_ref(),
                path.as_os_str(),
            ];
            // Without `-e` nginx opens its compiled-in error log (often under /var/log) before
            // reading the config; the flag exists from 1.19.5.
            if version_at_least(&available.version, &[1, 19, 5]) {
                args.extend([OsStr::new("-e"), OsStr::new("stderr")]);
            }
            Ok(vec![launch("nginx", args, listen)?])
        }
        PeerKind::Haproxy => {
            // haproxy's `crt` takes the chain and its key in one file.
            let pem = format!("{}\n{}", read(&tls.chain)?.trim_end(), read(&tls.key)?);
            let pem = write(dir, "haproxy.pem", &pem)?;
            let config = haproxy_config(&pem, tls, listen, upstream, pool, limits);
            let path = write(dir, "haproxy.cfg", &config)?;
            // -db: foreground, no daemon, no master process: one process to sample.
            let args = vec!["-db".as_ref(), "-f".as_ref(), path.as_os_str()];
            Ok(vec![launch("haproxy", args, listen)?])
        }
        PeerKind::StunnelPair => {
            let internal = free_port()?;
            let config = stunnel_config(Side::Server, tls, internal, upstream);
            let path = write(dir, "stunnel-server.conf", &config)?;
            let mut server = launch("stunnel-server", vec![path.as_os_str()], internal)?;
            let config = stunnel_config(Side::Client, tls, listen, internal);
            let path = write(dir, "stunnel-client.conf", &config)?;
            let client = launch("stunnel-client", vec![path.as_os_str()], listen)?;
            // The readiness probes reach the server side as clients that sent nothing; a side
            // that died of it would show here.
            server.check_alive()?;
            Ok(vec![client, server])
        }
    }
}

// === helpers ===

/// The first executable `name` on PATH, then in /usr/sbin and /usr/bin.
fn locate(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// `1.22.1 (OpenSSL 3.0.22)` from a peer's version output; `None` when it has no TLS library.
fn parse_version(kind: PeerKind, text: &str) -> Option<String> {
    let after = |prefix: &str| {
        text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(prefix)?;
            rest.split_whitespace().next().map(str::to_owned)
        })
    };
    let (version, openssl) = match kind {
        PeerKind::Nginx => (
            after("nginx version: nginx/")?,
            // Prefer the library it runs with when nginx reports both.
            text.split("running with OpenSSL ")
                .nth(1)
                .or_else(|| text.split("built with OpenSSL ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)?,
        ),
        PeerKind::Haproxy => (
            after("HAProxy version ")?,
            after("Running on OpenSSL version : OpenSSL ")
                .or_else(|| after("Built with OpenSSL version : OpenSSL "))?,
        ),
        PeerKind::StunnelPair => (
            after("stunnel ")?,
            after("Running  with OpenSSL ").or_else(|| after("Running with OpenSSL "))?,
        ),
    };
    Some(format!("{version} (OpenSSL {openssl})"))
}

/// Whether a version string starting `1.22.1 ...` is at least `minimum`.
fn version_at_least(version: &str, minimum: &[u64]) -> bool {
    let numbers: Vec<u64> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(minimum.len())
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    numbers.as_slice() >= minimum
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_real_outputs() {
        let nginx = "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.22 25 Aug 2026\n";
        assert_eq!(
            parse_version(PeerKind::Nginx, nginx).unwrap(),
            "1.22.1 (OpenSSL 3.0.22)"
        );
        let haproxy = "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\n\
                       Built with OpenSSL version : OpenSSL 3.0.9 30 May 2023\n\
                       Running on OpenSSL version : OpenSSL 3.0.22 25 Aug 2026\n";
        assert_eq!(
            parse_version(PeerKind::Haproxy, haproxy).unwrap(),
            "2.6.12-1+deb12u4 (OpenSSL 3.0.22)"
        );
        let stunnel = "stunnel 5.68 on x86_64-pc-linux-gnu platform\n\
                       Compiled with OpenSSL 3.0.9 30 May 2023\n\
                       Running  with OpenSSL 3.0.22 25 Aug 2026\n";
        assert_eq!(
            parse_version(PeerKind::StunnelPair, stunnel).unwrap(),
            "5.68 (OpenSSL 3.0.22)"
        );
        // Built without TLS: no OpenSSL line, not usable.
        assert_eq!(
            parse_version(PeerKind::Nginx, "nginx version: nginx/1.22.1\n"),
            None
        );
    }

    #[test]
    fn binaries_are_found_on_path_or_in_sbin() {
        assert!(locate("sh").is_some());
        assert_eq!(locate("meshguard-perf-no-such-peer"), None);
    }

    #[test]
    fn version_comparison() {
        assert!(version_at_least("1.22.1 (OpenSSL 3.0.22)", &[1, 19, 5]));
        assert!(version_at_least("1.19.5", &[1, 19, 5]));
        assert!(!version_at_least("1.18.0 (OpenSSL 1.1.1)", &[1, 19, 5]));
    }

    #[test]
    fn configs_keep_every_file_in_the_directory() {
        let dir = Path::new("/tmp/peer");
        let tls = PeerTls {
            chain: dir.join("svid.pem"),
            key: dir.join("svid.key"),
            bundle: dir.join("bundle.pem"),
        };
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let upstream: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let limits = Limits {
            open_files: 20_000,
            connections: 9_968,
            root: false,
        };
        let pool = PoolRoute {
            listen: "127.0.0.1:8444".parse().unwrap(),
            endpoints: vec![upstream, "127.0.0.1:8081".parse().unwrap()],
        };
        let nginx = nginx_config(
            dir,
            &tls,
            listen,
            upstream,
            Some(&pool),
            limits,
            "--without-http_uwsgi_module",
        );
        // The pool route is a second TLS server block, with every replica and nginx's failover.
        assert_eq!(nginx.matches("ssl_verify_client on;").count(), 2);
        assert!(nginx.contains("server 127.0.0.1:8081 max_fails=5 fail_timeout=1s;"));
        assert!(nginx.contains("proxy_next_upstream_tries 3;"));
        assert!(nginx.contains("ssl_verify_client on;"));
        assert!(nginx.contains("ssl_protocols TLSv1.3;"));
        assert!(nginx.contains("worker_processes 1;"));
        assert!(!nginx.contains("uwsgi_temp_path"));
        assert!(!nginx.contains("user root"));
        for line in nginx.lines().filter(|l| l.contains('/')) {
            assert!(!line.contains("/etc") && !line.contains("/var"), "{line}");
        }
        let haproxy = haproxy_config(
            &dir.join("haproxy.pem"),
            &tls,
            listen,
            upstream,
            None,
            limits,
        );
        assert!(haproxy.contains("verify required ssl-min-ver TLSv1.3"));
        assert!(!haproxy.contains("meshguard_perf_pool"));
        let haproxy = haproxy_config(
            &dir.join("haproxy.pem"),
            &tls,
            listen,
            upstream,
            Some(&pool),
            limits,
        );
        assert_eq!(haproxy.matches("verify required").count(), 2);
        assert!(haproxy.contains("server replica-1 127.0.0.1:8081 check"));
        assert!(haproxy.contains("option redispatch 1") && haproxy.contains("retries 2"));
        assert!(haproxy.contains("nbthread 1"));
        let server = stunnel_config(Side::Server, &tls, listen, upstream);
        assert!(server.contains("requireCert = yes") && !server.contains("client = yes"));
        let client = stunnel_config(Side::Client, &tls, listen, upstream);
        assert!(client.contains("client = yes") && client.contains("verifyChain = yes"));
    }

    #[test]
    fn keys_are_stable() {
        let keys: Vec<_> = PeerKind::ALL.iter().map(|k| k.key()).collect();
        assert_eq!(keys, ["nginx", "haproxy", "stunnel-pair"]);
    }
}
