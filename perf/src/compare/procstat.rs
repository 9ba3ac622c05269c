//! CPU time and resident memory of a proxy's process tree, read from /proc.
//!
//! The comparison divides work done by the CPU seconds the proxy spent, so it must count every
//! process the proxy runs as: nginx's and haproxy's master and workers, both stunnel processes of a
//! pair. `usage` therefore sums over each root pid and all its descendants, found by following parent
//! pids across one scan of /proc. Samples are taken before and after a run and subtracted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use procfs::WithCurrentSystemInfo as _;

/// What a process tree had used at the moment of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time of the live processes (their threads included).
    pub cpu: Duration,
    /// Resident set size summed over the processes (pages shared between them count once per
    /// process, as VmRSS does).
    pub rss_bytes: u64,
    /// Processes counted.
    pub processes: usize,
}

/// Samples each root pid and all its descendants. Processes that exit during the scan are skipped;
/// it is an error only when none of the roots exists (the proxy died). Children that already exited
/// are not counted: proxies keep their workers for the whole run.
pub fn usage(roots: &[u32]) -> anyhow::Result<Usage> {
    if roots.is_empty() {
        return Ok(Usage::default());
    }
    let tree = tree(roots)?;
    let ticks = procfs::ticks_per_second().max(1);
    let mut total = Usage::default();
    let mut roots_seen = 0;
    for pid in tree {
        // Gone since the scan (or never there, for a root): skip it.
        let Ok(stat) = read_stat(pid) else {
            continue;
        };
        if roots.contains(&pid) {
            roots_seen += 1;
        }
        let cpu_ticks = stat.utime.saturating_add(stat.stime);
        total.cpu += ticks_to_duration(cpu_ticks, ticks);
        // statm/stat's RSS counts pages; procfs multiplies by the system's page size.
        total.rss_bytes = total.rss_bytes.saturating_add(stat.rss_bytes().get());
        total.processes += 1;
    }
    if roots_seen == 0 {
        bail!(
            "none of the processes {roots:?} is running any more: the proxy exited (see its log)"
        );
    }
    Ok(total)
}

/// Every live descendant of `root` (children, their children, ...), not `root` itself. Empty when
/// /proc cannot be read.
pub fn descendants(root: u32) -> Vec<u32> {
    tree(&[root])
        .map(|all| all.into_iter().filter(|&pid| pid != root).collect())
        .unwrap_or_default()
}

/// `roots` plus all their descendants, each once, roots first.
fn tree(roots: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for process in procfs::process::all_processes().context("cannot list /proc")? {
        // A process listed but gone before its stat was read is simply not part of the tree.
        let Ok(stat) = process.and_then(|p| p.stat()) else {
            continue;
        };
        if let (Ok(pid), Ok(ppid)) = (u32::try_from(stat.pid), u32::try_from(stat.ppid)) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut order = Vec::new();
    let mut queue: Vec<u32> = roots.to_vec();
    let mut next = 0;
    while next < queue.len() {
        let pid = queue[next];
        next += 1;
        if !seen.insert(pid) {
            continue;
        }
        order.push(pid);
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids.iter().copied());
        }
    }
    Ok(order)
}

fn read_stat(pid: u32) -> anyhow::Result<procfs::process::Stat> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    Ok(procfs::process::Process::new(pid)?.stat()?)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let whole = ticks / per_second;
    let rest = ticks % per_second;
    Duration::from_secs(whole) + Duration::from_nanos(rest * 1_000_000_000 / per_second)
}

// === impl Usage ===

/// `later - earlier`: the CPU time spent between two samples (saturating at zero, in case a worker
/// restarted and took its counters with it), with `later`'s RSS and process count, because memory
/// is a level, not a flow: what a run leaves resident is what it costs.
impl std::ops::Sub for Usage {
    type Output = Usage;

    fn sub(self, earlier: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            rss_bytes: self.rss_bytes,
            processes: self.processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
        assert_eq!(ticks_to_duration(0, 100), Duration::ZERO);
    }

    #[test]
    fn a_busy_thread_raises_cpu() {
        let before = usage(&[me()]).unwrap();
        assert!(before.processes >= 1);
        assert!(before.rss_bytes > 0);
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        };
        // Spin until the counters moved (not a fixed time): at least a few ticks' worth.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut after = before;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            after = usage(&[me()]).unwrap();
            if (after - before).cpu >= Duration::from_millis(100) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert!(
            (after - before).cpu >= Duration::from_millis(100),
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn a_spawned_child_is_a_descendant() {
        let mut child = Command::new("sleep")
            .arg("5")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let sampled = usage(&[me()]);
        let listed = descendants(me());
        let _ = child.kill();
        let _ = child.wait();
        assert!(sampled.unwrap().processes >= 2);
        assert!(listed.contains(&child.id()));
    }

    #[test]
    fn touched_memory_raises_rss() {
        const SIZE: usize = 64 << 20;
        let before = usage(&[me()]).unwrap();
        // Every page written, so it is resident rather than merely reserved.
        let block = std::hint::black_box(vec![1u8; SIZE]);
        let after = usage(&[me()]).unwrap();
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        let grew = after.rss_bytes.saturating_sub(before.rss_bytes);
        assert!(grew >= 48 << 20, "RSS grew by {grew} bytes only");
    }

    #[test]
    fn roots_and_shared_descendants_count_once() {
        let once = usage(&[me()]).unwrap();
        let twice = usage(&[me(), me()]).unwrap();
        assert_eq!(once.processes, twice.processes);
    }

    #[test]
    fn a_missing_root_is_an_error_and_no_roots_is_zero() {
        // Above the default pid_max of 4194304: never a live process.
        let error = usage(&[u32::MAX - 1]).unwrap_err().to_string();
        assert!(
            error.contains("not running") || error.contains("running any more"),
            "{error}"
        );
        assert_eq!(usage(&[]).unwrap(), Usage::default());
    }

    #[test]
    fn subtracting_keeps_the_later_rss_and_never_goes_negative() {
        let earlier = Usage {
            cpu: Duration::from_secs(2),
            rss_bytes: 100,
            processes: 2,
        };
        let later = Usage {
            cpu: Duration::from_secs(5),
            rss_bytes: 70,
            processes: 3,
        };
        assert_eq!(
            later - earlier,
            Usage {
                cpu: Duration::from_secs(3),
                rss_bytes: 70,
                processes: 3
            }
        );
        assert_eq!((earlier - later).cpu, Duration::ZERO);
    }
}
