//! The resilience scenario's replicas: three built-in upstreams (`meshguard perf upstream`, one
//! thread each, plaintext) that every target's multi-endpoint route balances over, and the fault
//! injection on them: one replica is killed with SIGKILL in the middle of a run and started again
//! on the same port afterwards.
//!
//! A SIGKILL is what a crashed or OOM-killed pod looks like to its neighbours: the kernel resets
//! the connections that had unread bytes, closes the rest, and refuses new ones, with no graceful
//! goodbye in between. The proxies must steer around it without failing requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::pki::SvidFiles;
use super::process::{Child, free_port, wait_for_port};

/// How many replicas the pool has: enough that losing one leaves a choice between the others.
pub const REPLICAS: usize = 3;

/// How long a replica may take to listen again after a restart.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// The replicas, each at a fixed address for the whole comparison.
#[derive(Debug)]
pub struct UpstreamPool {
    meshguard: PathBuf,
    logs: PathBuf,
    replicas: Vec<Replica>,
}

#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    /// `None` while killed.
    child: Option<Child>,
    /// Restarts so far, so each incarnation writes its own log.
    generation: u32,
}

impl UpstreamPool {
    /// Starts [`REPLICAS`] upstreams on free loopback ports and waits until each listens.
    pub fn start(meshguard: &Path, logs: &Path) -> anyhow::Result<UpstreamPool> {
        let mut pool = UpstreamPool {
            meshguard: meshguard.to_owned(),
            logs: logs.to_owned(),
            replicas: Vec::with_capacity(REPLICAS),
        };
        for index in 0..REPLICAS {
            let addr = free_port()?;
            let child = spawn_upstream(meshguard, logs, &replica_name(index, 0), addr, None)?;
            pool.replicas.push(Replica {
                addr,
                child: Some(child),
                generation: 0,
            });
        }
        Ok(pool)
    }

    /// The replicas' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// Kills replica `index` with SIGKILL (see the module docs); a no-op when it is already down.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.replicas.get_mut(index).and_then(|r| r.child.take()) {
            child.kill();
        }
    }

    /// Starts replica `index` again on its address, once it is down, and waits until it listens.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let replica = self
            .replicas
            .get_mut(index)
            .with_context(|| format!("the pool has no replica {index}"))?;
        if replica.child.is_some() {
            return Ok(());
        }
        replica.generation += 1;
        let name = replica_name(index, replica.generation);
        let child = spawn_upstream(&self.meshguard, &self.logs, &name, replica.addr, None)
            .with_context(|| format!("could not restart replica {index} on {}", replica.addr))?;
        replica.child = Some(child);
        Ok(())
    }

    /// Errors when a replica that should be running has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.replicas
            .iter_mut()
            .filter_map(|r| r.child.as_mut())
            .try_for_each(Child::check_alive)
    }
}

fn replica_name(index: usize, generation: u32) -> String {
    match generation {
        0 => format!("replica-{index}"),
        n => format!("replica-{index}-restart-{n}"),
    }
}

/// Starts `meshguard perf upstream` (one thread) on `addr` as `name`, behind mTLS with `tls`, and
/// waits until it accepts connections.
pub(crate) fn spawn_upstream(
    meshguard: &Path,
    logs: &Path,
    name: &str,
    addr: SocketAddr,
    tls: Option<&SvidFiles>,
) -> anyhow::Result<Child> {
    let mut command = Command::new(meshguard);
    command.args(["perf", "upstream", "--threads", "1", "--listen"]);
    command.arg(addr.to_string());
    if let Some(svid) = tls {
        command.arg("--cert").arg(&svid.chain);
        command.arg("--key").arg(&svid.key);
        command.arg("--bundle").arg(&svid.bundle);
    }
    let mut child = Child::spawn(name, command, logs)?;
    wait_for_port(&mut child, addr, RESTART_TIMEOUT)?;
    Ok(child)
}
