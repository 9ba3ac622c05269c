//! What a sidecar holds, read from /proc: open file descriptors (every socket and file) and
//! resident memory. The soak samples both before and after, and the peaks in between.

use serde::Serialize;

use crate::compare::procstat;

/// One sample of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Held {
    pub fds: u64,
    pub rss_bytes: u64,
}

impl Held {
    /// Samples `pid`; errors when it is gone.
    pub fn sample(pid: u32) -> anyhow::Result<Held> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| {
                anyhow::anyhow!("could not list /proc/{pid}/fd ({e}); did the sidecar exit?")
            })?
            .count() as u64;
        let rss_bytes = procstat::usage(&[pid])?.rss_bytes;
        Ok(Held { fds, rss_bytes })
    }

    /// The larger of each figure.
    pub fn max(self, other: Held) -> Held {
        Held {
            fds: self.fds.max(other.fds),
            rss_bytes: self.rss_bytes.max(other.rss_bytes),
        }
    }
}
