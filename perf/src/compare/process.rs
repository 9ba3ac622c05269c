//! Child processes of the comparison harness (meshguard sidecars, nginx, haproxy, stunnel).
//!
//! A proxy that fails to start usually says why on stderr and exits, so every child writes stdout and
//! stderr to a log file the harness can quote, and every wait on a child also watches for its exit:
//! an error then names the process and shows its last log lines instead of a bare timeout.
//! Children are stopped when their handle is dropped, so an early `?` never leaves a proxy running on
//! a loopback port.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a child has to exit after SIGTERM before it is killed: nginx and haproxy close their
/// listeners and flush logs well within this.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How often waits poll; short enough to add no noticeable delay, long enough not to burn a core.
const POLL: Duration = Duration::from_millis(20);
/// Log lines quoted when a child exits unexpectedly.
const TAIL_LINES: usize = 20;

/// A spawned process whose stdout and stderr go to `<logs_dir>/<name>.log`. Dropping it stops it
/// (SIGTERM, then SIGKILL after 3 s) and reaps it, so no zombie or orphan outlives the handle.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

// === impl Child ===

impl Child {
    /// Starts `command` with stdin closed and its output in `<logs_dir>/<name>.log` (created or
    /// truncated). `name` appears in every error about the process, so make it say which one it is
    /// (`nginx`, `stunnel-client`).
    pub fn spawn(name: &str, mut command: Command, logs_dir: &Path) -> anyhow::Result<Child> {
        let log = logs_dir.join(format!("{name}.log"));
        let stdout =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log.display()))?;
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name} ({program})"))?;
        Ok(Child {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating system's process id (the root of its tree, for [`super::procstat::usage`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Ok` while the process runs; once it has exited, an error with its exit status and the last
    /// lines of its log (what a proxy prints when its config is wrong).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited_error(status)),
            Err(error) => Err(anyhow::Error::new(error)
                .context(format!("cannot tell whether {} is running", self.name))),
        }
    }

    /// The last `lines` lines of its log (empty when it printed nothing or the log is unreadable).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    fn exited_error(&self, status: ExitStatus) -> anyhow::Error {
        let tail = self.log_tail(TAIL_LINES);
        let tail = if tail.trim().is_empty() {
            "(it printed nothing)".to_owned()
        } else {
            tail
        };
        anyhow::anyhow!(
            "{} exited ({status}); the end of its log {}:\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// SIGKILL now and reap: a crash as the rest of the system sees it (sockets reset or closed
    /// by the kernel, no goodbye), which is the fault the resilience scenario injects.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL to it and its descendants, and a reap.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // std has no SIGTERM and this crate forbids unsafe: the `kill` utility sends it.
        signal("-TERM", self.child.id());
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(POLL);
        }
        // A master that ignored SIGTERM would leave its workers behind when killed (they are not
        // told their parent died), so they go first.
        for pid in super::procstat::descendants(self.child.id()) {
            signal("-KILL", pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to `pid` with the `kill` utility; failures (already gone) are
/// ignored because the caller checks the outcome by waiting.
fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until a TCP connection to `addr` succeeds, checking every 20 ms that `child` still runs.
/// The error names the child and quotes its log when it exits first or `timeout` passes. It blocks
/// the calling thread: call it from `spawn_blocking` inside an async runtime.
pub fn wait_for_port(child: &mut Child, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        if TcpStream::connect_timeout(&addr, POLL * 5).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not accept connections on {addr} within {timeout:?}; the end of its log {}:\n{}",
                child.name(),
                child.log.display(),
                child.log_tail(TAIL_LINES)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound with port 0, then released), for configs
/// of programs that cannot report the port they bound. Another process could take it in between;
/// on loopback in a harness run that is rare, and the child then fails to start with a clear log.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .context("cannot bind 127.0.0.1:0 to find a free port")?;
    listener
        .local_addr()
        .context("cannot read the address of a bound socket")
}

/// The last `lines` lines of a text file, reading at most its last 64 KiB so a busy log costs little.
fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .is_err()
    {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn an_exited_child_reports_its_status_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Child::spawn(
            "failing",
            sh("echo out; echo bad config >&2; exit 3"),
            dir.path(),
        )
        .unwrap();
        let _ = child.child.wait();
        let error = child.check_alive().unwrap_err().to_string();
        assert!(error.contains("failing exited"), "{error}");
        assert!(error.contains("bad config"), "{error}");
        assert!(error.contains("out"), "{error}");
        assert_eq!(child.log_tail(1), "bad config");
    }

    #[test]
    fn wait_for_port_fails_fast_when_the_child_exits() {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port().unwrap();
        let mut child =
            Child::spawn("quitter", sh("echo cannot listen >&2; exit 1"), dir.path()).unwrap();
        let started = Instant::now();
        let error = wait_for_port(&mut child, addr, Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(error.contains("quitter exited"), "{error}");
        assert!(error.contains("cannot listen"), "{error}");
        // Bounded by the child's exit, not by the 30 s timeout.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn wait_for_port_times_out_naming_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port().unwrap();
        let mut child = Child::spawn("silent", sh("exec sleep 30"), dir.path()).unwrap();
        let error = wait_for_port(&mut child, addr, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(error.contains("silent did not accept"), "{error}");
    }

    #[test]
    fn wait_for_port_returns_once_listening() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut child = Child::spawn("sleeper", sh("exec sleep 30"), dir.path()).unwrap();
        wait_for_port(&mut child, addr, Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn drop_terminates_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let child = Child::spawn("sleeper", sh("exec sleep 30"), dir.path()).unwrap();
        let pid = child.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(child);
        // Reaped, not a zombie: the /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn drop_kills_a_child_that_ignores_sigterm_and_its_descendants() {
        let dir = tempfile::tempdir().unwrap();
        // The shell ignores TERM and waits on a grandchild that ignores it too (inherited).
        let mut child = Child::spawn(
            "stubborn",
            sh("trap '' TERM; sleep 30 & echo started; wait"),
            dir.path(),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child.log_tail(1).contains("started") && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        child.check_alive().unwrap();
        let pid = child.pid();
        let grandchildren = super::super::procstat::descendants(pid);
        assert!(!grandchildren.is_empty());
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        for grandchild in grandchildren {
            // SIGKILL was sent; the kernel delivers it asynchronously and init reaps the orphan a
            // moment later, so a loaded machine may still show it running briefly.
            let running = || {
                // Gone (no /proc entry) and a zombie both count as killed.
                let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).ok()?;
                let alive = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
                alive.then_some(stat)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while running().is_some() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if let Some(stat) = running() {
                panic!("grandchild {grandchild} still runs 10 s after the kill: {stat}");
            }
        }
    }

    #[test]
    fn free_port_is_on_loopback_and_bindable() {
        let addr = free_port().unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).unwrap();
    }
}
