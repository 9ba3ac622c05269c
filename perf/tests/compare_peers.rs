//! The peer proxies of `perf compare`, started for real on loopback: nginx and haproxy must
//! terminate mTLS (and refuse clients without a trusted certificate) and proxy HTTP/1.1 to the
//! built-in upstream over keep-alive; the stunnel pair must carry TCP through mTLS; each must show
//! up in /proc with its processes. A peer that is not installed (CI) is skipped with a loud line.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use meshguard_identity::test_ca::{BadSvid, SvidFiles, SvidSpec, TestCa};
use meshguard_perf::compare::peers::{self, Available, PeerKind, PeerTls, PoolRoute};
use meshguard_perf::compare::process::{Child, free_port};
use meshguard_perf::compare::procstat;
use meshguard_perf::upstream::Upstream;

/// A throwaway trust domain, the built-in upstream, and a directory for the peer's files.
struct Setup {
    dir: tempfile::TempDir,
    /// The peer's server certificate (URI SAN `spiffe://perf.test/peer`, DNS SAN localhost for curl).
    server: SvidFiles,
    /// A client SVID of the same trust domain (`spiffe://perf.test/client`).
    client: SvidFiles,
    /// A client certificate of our trust domain issued by a CA outside the bundle.
    rogue: SvidFiles,
    upstream: SocketAddr,
    /// Serves the upstream on its own thread while the test thread blocks on processes.
    _runtime: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("perf.test");
    let bundle = ca.bundle_pem();
    let write = |name: &str, svid: meshguard_identity::test_ca::IssuedSvid| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        svid.write_to_dir(&sub, &bundle).unwrap()
    };
    let server = write(
        "peer-tls",
        ca.issue_with(&SvidSpec::new("/peer").dns("localhost")),
    );
    let client = write("client-tls", ca.issue("/client"));
    let rogue = write("rogue-tls", ca.issue_bad(BadSvid::UnknownIssuer, "/client"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime
        .block_on(Upstream::bind("127.0.0.1:0".parse().unwrap(), None, 64))
        .unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    runtime.spawn(upstream.serve());
    Setup {
        dir,
        server,
        client,
        rogue,
        upstream: upstream_addr,
        _runtime: runtime,
    }
}

impl Setup {
    fn peer_tls(&self) -> PeerTls {
        PeerTls {
            chain: self.server.cert.clone(),
            key: self.server.key.clone(),
            bundle: self.server.bundle.clone(),
        }
    }

    fn peer_dir(&self, kind: PeerKind) -> std::path::PathBuf {
        self.dir.path().join(kind.key())
    }
}

/// The peer, or `None` after a loud SKIP line when it (or curl, for the HTTP peers) is missing.
fn find_or_skip(kind: PeerKind) -> Option<Available> {
    match kind.find() {
        Ok(available) => {
            eprintln!("{}", kind.describe(&available));
            Some(available)
        }
        Err(reason) => {
            eprintln!("SKIP: {} peer test: {reason}", kind.key());
            None
        }
    }
}

fn curl_missing() -> bool {
    let missing = Command::new("curl").arg("--version").output().is_err();
    if missing {
        eprintln!("SKIP: curl is not installed (apt-get install curl)");
    }
    missing
}

/// Two GETs on one connection through the peer; curl verifies the peer's certificate against the
/// bundle and the name `localhost`. Prints `<status> <new connections>` per request.
fn curl_twice(listen: SocketAddr, client: Option<&SvidFiles>, bundle: &Path) -> Output {
    let url = format!("https://localhost:{}/", listen.port());
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--tlsv1.3", "--http1.1"])
        .arg("--cacert")
        .arg(bundle)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", listen.port()))
        .args(["-w", "%{http_code} %{num_connects}\\n"])
        .args(["-o", "/dev/null", "-o", "/dev/null", &url, &url]);
    if let Some(client) = client {
        command
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Refused: the handshake failed (curl exits non-zero) or the proxy answered an error itself
/// (nginx completes TLS 1.3 handshakes and then answers 400 when no certificate was sent).
fn refused(output: &Output) -> bool {
    !output.status.success() || !String::from_utf8_lossy(&output.stdout).starts_with("200")
}

fn assert_sampled(children: &[Child], min_processes: usize) {
    let pids: Vec<u32> = children.iter().map(Child::pid).collect();
    let usage = procstat::usage(&pids).unwrap();
    eprintln!("{pids:?}: {usage:?}");
    assert!(usage.rss_bytes > 0, "{usage:?}");
    assert!(usage.processes >= min_processes, "{usage:?}");
}

fn http_peer_terminates_mtls_and_proxies(kind: PeerKind, min_processes: usize) {
    let Some(available) = find_or_skip(kind) else {
        return;
    };
    if curl_missing() {
        return;
    }
    let setup = setup();
    let listen = free_port().unwrap();
    let dir = setup.peer_dir(kind);
    // The pool route balances over the upstream and a port nothing listens on: the peer's
    // failover must pass every request that meets the dead one on to the live one.
    let pool = PoolRoute {
        listen: free_port().unwrap(),
        endpoints: vec![free_port().unwrap(), setup.upstream],
    };
    let mut children = peers::start(
        &available,
        &dir,
        &setup.peer_tls(),
        listen,
        setup.upstream,
        Some(&pool),
    )
    .unwrap();
    for _ in 0..3 {
        let through_pool = curl_twice(pool.listen, Some(&setup.client), &setup.client.bundle);
        let codes = String::from_utf8_lossy(&through_pool.stdout);
        assert!(
            codes.lines().all(|l| l.starts_with("200 ")) && codes.lines().count() == 2,
            "{} failed a request over a dead replica: {}",
            kind.key(),
            text(&through_pool)
        );
    }

    let ok = curl_twice(listen, Some(&setup.client), &setup.client.bundle);
    // Both 200, the second on the connection the first opened (keep-alive from the client).
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "200 1\n200 0\n",
        "{}",
        text(&ok)
    );
    let anonymous = curl_twice(listen, None, &setup.client.bundle);
    assert!(
        refused(&anonymous),
        "no client certificate: {}",
        text(&anonymous)
    );
    let rogue = curl_twice(listen, Some(&setup.rogue), &setup.client.bundle);
    assert!(
        refused(&rogue),
        "untrusted client certificate: {}",
        text(&rogue)
    );

    assert_sampled(&children, min_processes);
    for child in &mut children {
        child.check_alive().unwrap();
    }
    drop(children);
    if kind == PeerKind::Nginx {
        // The access log is buffered; nginx writes it out when it stops.
        let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
        assert!(log.contains("\"GET / HTTP/1.1\" 200"), "{log}");
    }
}

#[test]
fn nginx_terminates_mtls_and_proxies_with_keep_alive() {
    // Master and worker.
    http_peer_terminates_mtls_and_proxies(PeerKind::Nginx, 2);
}

#[test]
fn haproxy_terminates_mtls_and_proxies_with_keep_alive() {
    http_peer_terminates_mtls_and_proxies(PeerKind::Haproxy, 1);
}

#[test]
fn stunnel_pair_carries_tcp_through_mtls() {
    let Some(available) = find_or_skip(PeerKind::StunnelPair) else {
        return;
    };
    let setup = setup();
    let listen = free_port().unwrap();
    let children = peers::start(
        &available,
        &setup.peer_dir(PeerKind::StunnelPair),
        &setup.peer_tls(),
        listen,
        setup.upstream,
        None,
    )
    .unwrap();
    let names: Vec<&str> = children.iter().map(Child::name).collect();
    assert_eq!(names, ["stunnel-client", "stunnel-server"]);

    // Zero bytes: the upstream echoes them (they never look like an HTTP request line).
    let message = vec![0u8; 64 * 1024];
    let mut stream = TcpStream::connect(listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&message).unwrap();
    let mut echoed = vec![1u8; message.len()];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
    // Closing our side closes the chain: the upstream closes back, the pair passes it on.
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    assert_sampled(&children, 2);
}

#[test]
fn a_peer_that_cannot_start_says_which_and_why() {
    let setup = setup();
    for kind in PeerKind::ALL {
        let Some(available) = find_or_skip(kind) else {
            continue;
        };
        let mut tls = setup.peer_tls();
        tls.bundle = setup.dir.path().join("no-such-bundle.pem");
        let listen = free_port().unwrap();
        let error = peers::start(
            &available,
            &setup.peer_dir(kind),
            &tls,
            listen,
            setup.upstream,
            None,
        )
        .map(|children| children.len())
        .unwrap_err();
        let message = format!("{error:#}");
        eprintln!("{message}");
        // The error names the process and quotes what it said about the missing bundle.
        let (name, said) = match kind {
            PeerKind::StunnelPair => ("stunnel-server", "No trusted certificates found"),
            PeerKind::Nginx | PeerKind::Haproxy => (kind.key(), "no-such-bundle.pem"),
        };
        assert!(message.contains(&format!("{name} exited")), "{message}");
        assert!(message.contains(said), "{message}");
    }
}
