//! Watching policy files: a background thread reloads the [`PolicyStore`] when any file of the
//! current revision changes (editors that replace files by rename included, since the directories
//! are watched). Bursts of events are coalesced into one reload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::PolicyError;
use crate::store::{PolicyStore, Reloaded};

/// Events closer together than this are one change.
const SETTLE: Duration = Duration::from_millis(100);

enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// Keeps the watch alive; dropping it stops the thread.
#[derive(Debug)]
pub struct PolicyWatcher {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching `store`'s files; `on_reload` hears every reload attempt (success or the error
/// that kept the last good revision).
pub fn watch(
    store: Arc<PolicyStore>,
    on_reload: impl Fn(Result<Reloaded, PolicyError>) + Send + 'static,
) -> Result<PolicyWatcher, PolicyError> {
    let (tx, rx) = channel();
    let events = tx.clone();
    let mut watcher = RecommendedWatcher::new(
        move |event| {
            let _ = events.send(Msg::Event(event));
        },
        notify::Config::default(),
    )
    .map_err(|source| PolicyError::Watch { source })?;
    let mut dirs = BTreeSet::new();
    sync_dirs(&mut watcher, &mut dirs, &store.watched_paths())?;

    let thread = std::thread::Builder::new()
        .name("meshguard-policy-watch".into())
        .spawn(move || {
            loop {
                let relevant = match rx.recv() {
                    Ok(Msg::Event(event)) => touches(&event, &store.watched_paths()),
                    Ok(Msg::Stop) | Err(_) => return,
                };
                if !relevant {
                    continue;
                }
                // Let the burst settle (write + rename + chmod), then reload once. Only events on
                // policy files extend the wait: a busy neighbour in the same directory (an access
                // log, say) must not postpone the reload forever.
                let mut deadline = settle_deadline();
                loop {
                    let left = deadline.saturating_duration_since(now());
                    match rx.recv_timeout(left) {
                        Ok(Msg::Event(event)) => {
                            if touches(&event, &store.watched_paths()) {
                                deadline = settle_deadline();
                            }
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => break,
                    }
                }
                let result = store.reload();
                let resync = result.as_ref().is_ok_and(|r| r.changed);
                let watch_error = resync
                    .then(|| sync_dirs(&mut watcher, &mut dirs, &store.watched_paths()).err())
                    .flatten();
                if let Some(error) = watch_error {
                    tracing::warn!(%error, "cannot watch a new policy directory");
                }
                on_reload(result);
            }
        })
        .map_err(|e| PolicyError::Watch {
            source: notify::Error::io(e),
        })?;
    Ok(PolicyWatcher {
        tx,
        thread: Some(thread),
    })
}

// The watcher thread is the one place in this crate that waits on a clock: it debounces file
// events and decides nothing.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn settle_deadline() -> Instant {
    now() + SETTLE
}

fn touches(event: &notify::Result<notify::Event>, files: &[PathBuf]) -> bool {
    match event {
        // Opens and unwritten closes are reads, our own reload's among them: reacting to them
        // would reload every SETTLE forever.
        Ok(event) if is_read_only_access(&event.kind) => false,
        Ok(event) => event
            .paths
            .iter()
            .any(|p| files.iter().any(|f| same_file(p, f))),
        // An error from the OS watcher: reload to be safe.
        Err(_) => true,
    }
}

/// An open, a read or a close without writing: nothing changed.
fn is_read_only_access(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        notify::EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn same_file(event_path: &std::path::Path, file: &std::path::Path) -> bool {
    if event_path == file {
        return true;
    }
    // Most events name another file of a watched directory (an access log written next to the
    // policy file: one event per write). Tell those apart by name with one lstat instead of
    // canonicalizing both paths; only a symlink with another name can still be the policy file.
    if event_path.file_name() != file.file_name()
        && !std::fs::symlink_metadata(event_path).is_ok_and(|m| m.file_type().is_symlink())
    {
        return false;
    }
    match (event_path.canonicalize(), file.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => {
            event_path.file_name() == file.file_name()
                && event_path.parent().and_then(|p| p.canonicalize().ok())
                    == file.parent().and_then(|p| p.canonicalize().ok())
        }
    }
}

fn sync_dirs(
    watcher: &mut RecommendedWatcher,
    dirs: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) -> Result<(), PolicyError> {
    for file in files {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if dirs.insert(dir.clone()) {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| PolicyError::Watch { source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_picked_up_and_broken_edits_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "default = \"deny\"\n").unwrap();
        let store = Arc::new(PolicyStore::load(vec![file.clone()], None).unwrap());
        let first = store.revision();
        let (tx, rx) = channel();
        let _watcher = watch(store.clone(), move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        })
        .unwrap();

        std::fs::write(&file, "default = \"audit\"\n").unwrap();
        let reloaded = rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        assert!(reloaded.changed && reloaded.revision != first);
        assert_eq!(store.current().default_mode(), crate::DefaultMode::Audit);

        std::fs::write(&file, "default = \"sometimes\"\n").unwrap();
        let err = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("p.toml:1:11"), "{err}");
        assert_eq!(store.revision(), reloaded.revision);
    }

    #[test]
    fn a_busy_neighbour_file_does_not_postpone_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "default = \"deny\"\n").unwrap();
        let store = Arc::new(PolicyStore::load(vec![file.clone()], None).unwrap());
        let (tx, rx) = channel();
        let _watcher = watch(store.clone(), move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        })
        .unwrap();

        // A log in the same directory written more often than the settle time, for the whole test.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let log = dir.path().join("access.log");
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(log).unwrap();
                for _ in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    writeln!(f, "{{\"line\":1}}").unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        std::fs::write(&file, "default = \"audit\"\n").unwrap();
        let reloaded = rx.recv_timeout(Duration::from_secs(15));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(reloaded.unwrap().unwrap().changed);
        assert_eq!(store.current().default_mode(), crate::DefaultMode::Audit);
    }

    #[test]
    fn events_name_the_policy_file_by_path_or_by_a_symlink_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        let log = dir.path().join("access.log");
        std::fs::write(&policy, "").unwrap();
        std::fs::write(&log, "").unwrap();
        assert!(same_file(&policy, &policy));
        assert!(!same_file(&log, &policy));
        // Removed since: not a symlink, another name, not the policy.
        assert!(!same_file(&dir.path().join("gone.log"), &policy));
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(&policy, &link).unwrap();
        assert!(same_file(&link, &policy));
    }

    #[test]
    fn a_reload_does_not_trigger_the_next_one() {
        // The reload opens and reads the file; inotify reports those opens. Counting them as
        // changes made the watcher reload every SETTLE, forever, after the first edit.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "default = \"deny\"\n").unwrap();
        let store = Arc::new(PolicyStore::load(vec![file.clone()], None).unwrap());
        let (tx, rx) = channel();
        let _watcher = watch(store, move |r| {
            let _ = tx.send(r.is_ok());
        })
        .unwrap();
        std::fs::write(&file, "default = \"audit\"\n").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
        // Ten settle periods of quiet: a self-triggering watcher would have reloaded ~10 times.
        let extra = (0..10)
            .filter(|_| rx.recv_timeout(SETTLE * 2).is_ok())
            .count();
        assert_eq!(extra, 0, "the watcher kept reloading an unchanged file");
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        assert!(is_read_only_access(&notify::EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        )));
        assert!(is_read_only_access(&notify::EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        )));
        assert!(!is_read_only_access(&notify::EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        )));
        assert!(!is_read_only_access(&notify::EventKind::Modify(
            ModifyKind::Any
        )));
    }
}
