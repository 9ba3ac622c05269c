//! Network namespaces for tests: create one, join two with a veth pair carrying addresses, run
//! commands inside, and delete everything on drop (a failing test leaves nothing behind).
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2. [`available`] says whether this host can;
//! [`require_or_skip`] turns "cannot" into a loud skip, or a failure under `MESHGUARD_REQUIRE_NETNS=1`.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Names must be unique per process and test; the pid and a counter make them so.
static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Interface names are limited to 15 bytes, so keep the pid short.
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A network namespace, deleted (with its interfaces and the processes' sockets) on drop.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace named `<prefix><pid>x<n>`, its loopback up.
    pub(crate) fn new(prefix: &str) -> Self {
        let ns = Self {
            name: unique(prefix),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]));
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `args` as a command inside the namespace (`ip netns exec`), to configure and spawn.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `args` inside the namespace, panicking with its stderr when it fails.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Joins `self` and `other` with a veth pair, gives each end its addresses (CIDR, IPv4 or
    /// IPv6) and brings both up. IPv6 addresses skip duplicate address detection so they are
    /// usable at once.
    pub(crate) fn link(&self, addrs: &[&str], other: &Netns, other_addrs: &[&str]) {
        let (here, there) = (unique("mga"), unique("mgb"));
        run(Command::new("ip").args([
            "link",
            "add",
            &here,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.name,
        ]));
        for (ns, dev, addrs) in [(self, &here, addrs), (other, &there, other_addrs)] {
            for addr in addrs {
                let mut args = vec!["ip", "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.run(&args);
            }
            ns.run(&["ip", "link", "set", dev, "up"]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep running but lose their network; callers kill theirs first.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether this host can run namespace tests: `Err` says what is missing.
pub(crate) fn available(tools: &[&str]) -> Result<(), String> {
    let probe = unique("mgprobe");
    let created = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    if !created.status.success() {
        return Err(format!(
            "`ip netns add` failed ({}); namespace tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match tools.iter().find(|tool| !super::tools::on_path(tool)) {
        Some(tool) => Err(format!(
            "`{tool}` is not installed (scripts/install-deps installs it)"
        )),
        None => Ok(()),
    }
}

/// `true` when the test can run. Otherwise a loud SKIPPED banner and `false`, or, under
/// `MESHGUARD_REQUIRE_NETNS=1` (CI, scripts/test), a panic: a test that cannot run there fails.
pub(crate) fn require_or_skip(test: &str, tools: &[&str]) -> bool {
    let Err(why) = available(tools) else {
        return true;
    };
    if std::env::var("MESHGUARD_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("MESHGUARD_REQUIRE_NETNS=1 but {test} cannot run: {why}");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: {why}. Set MESHGUARD_REQUIRE_NETNS=1 to make this a failure. !!!!!\n"
    );
    false
}
