//! Child processes of the real `meshguard` binary. Every child gets the demo's environment (its own
//! `SOFTHSM2_CONF`, never the caller's), keeps its stderr in a file the transcript can quote when a
//! step fails, and is stopped with SIGTERM (then SIGKILL) when its handle is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// How to run `meshguard`: the binary and the environment every child gets.
#[derive(Debug, Clone)]
pub struct Meshguard {
    bin: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
}

impl Meshguard {
    /// `bin` is the `meshguard` executable; child stderr files go under `logs`.
    pub fn new(bin: PathBuf, logs: PathBuf) -> Self {
        Self {
            bin,
            env: Vec::new(),
            logs,
        }
    }

    /// Adds a variable to every child's environment.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs a short command to completion; stdout and stderr are returned, not printed.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("cannot run {} {}", self.bin.display(), args.join(" ")))
    }

    /// Runs a short command that must succeed; returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.output(args)?;
        if !output.status.success() {
            bail!(
                "`meshguard {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts a long-running child; its stdout is piped (for servers that print their address),
    /// its stderr goes to `<logs>/<name>.log`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<Child> {
        let log = self.logs.join(format!("{name}.log"));
        let stderr =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}: {}", self.bin.display()))?;
        Ok(Child {
            name: name.to_owned(),
            child,
            log,
        })
    }
}

/// A running child process, stopped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Its name in the transcript.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its stderr file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Takes the piped stdout (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// `Some(status)` when the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its stderr, for error messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// SIGTERM, up to `grace` to exit (the proxy drains and flushes its access log), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        // std has no SIGTERM and this crate forbids unsafe: the `kill` utility sends it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// The last `lines` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
