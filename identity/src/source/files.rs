//! Credentials from PEM files (certificate chain, private key, trust bundle), as written by an
//! operator, `meshguard ca issue`, cert-manager or a SPIRE helper.
//!
//! The files are re-read when they change: the directories holding them are watched (`notify`),
//! and, because atomic renames, symlink swaps (Kubernetes secret volumes) and bind mounts can hide
//! changes from watchers, their contents are also compared on a fixed poll interval. A rewrite that
//! does not parse, whose key does not match, or whose SVID does not validate against the bundle is
//! logged with the file and the reason, and the current credentials keep serving.
//!
//! Files are read with blocking `std::fs` calls: they are small local files, and reading them on a
//! runtime thread keeps paused-time tests deterministic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

use crate::bundle::{BundleSet, TrustBundle};
use crate::credentials::Credentials;
use crate::error::IdentityError;
use crate::spiffe_id::TrustDomain;
use crate::svid::X509Svid;

use super::error::SourceError;
use super::{IdentitySource, SourceFuture};

/// Where the files are and how often to look at them.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// The SVID chain as PEM, leaf first, then any intermediates.
    pub cert: PathBuf,
    /// The SVID's private key as PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The roots of the SVID's own trust domain: PEM certificates or a SPIFFE bundle (JWK Set).
    pub bundle: PathBuf,
    /// Bundles of federated trust domains, each kept apart under its own trust domain.
    pub federated: Vec<(TrustDomain, PathBuf)>,
    /// How often file contents are compared, as the fallback for changes the watcher misses.
    pub poll_interval: Duration,
    /// How long to wait after a change notice for writes to settle (a cert and key written in turn).
    pub settle: Duration,
    /// Whether to watch the directories for changes; without, only the poll notices them (for
    /// file systems that send no notifications, such as NFS).
    pub watch: bool,
}

impl FilesConfig {
    /// The usual layout of `meshguard ca issue --out DIR`: `svid.pem`, `svid.key`, `bundle.pem`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self::new(
            dir.join("svid.pem"),
            dir.join("svid.key"),
            dir.join("bundle.pem"),
        )
    }

    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
            federated: Vec::new(),
            poll_interval: Duration::from_secs(10),
            settle: Duration::from_millis(200),
            watch: true,
        }
    }

    pub fn with_federated(mut self, trust_domain: TrustDomain, bundle: impl Into<PathBuf>) -> Self {
        self.federated.push((trust_domain, bundle.into()));
        self
    }

    fn all_paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.bundle]
            .into_iter()
            .chain(self.federated.iter().map(|(_, p)| p))
            .map(PathBuf::as_path)
    }
}

/// The files identity source. Create it inside a tokio runtime.
pub struct FilesSource {
    config: FilesConfig,
    /// Signalled by the watcher thread on any event in a watched directory.
    events: Arc<Notify>,
    /// Kept alive for as long as the source: dropping it stops the watch.
    _watcher: Option<RecommendedWatcher>,
    poll: Interval,
    /// SHA-256 of each file as the last `fetch` saw it (`None`: unreadable), to tell real
    /// changes apart without keeping a second copy of the private key around.
    last_seen: Vec<Option<Fingerprint>>,
}

type Fingerprint = [u8; 32];

/// Shows the configuration only: the fingerprints are of key material.
impl std::fmt::Debug for FilesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesSource")
            .field("config", &self.config)
            .field("watching", &self._watcher.is_some())
            .finish_non_exhaustive()
    }
}

impl FilesSource {
    /// Starts watching the directories of the configured files; they must exist.
    pub fn new(config: FilesConfig) -> Result<Self, SourceError> {
        let events = Arc::new(Notify::new());
        let watcher = if config.watch {
            Some(watch_dirs(&config, events.clone())?)
        } else {
            None
        };
        let period = config.poll_interval.max(Duration::from_millis(100));
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            last_seen: Vec::new(),
            config,
            events,
            _watcher: watcher,
            poll,
        })
    }

    fn read_all(&self) -> Vec<Option<Fingerprint>> {
        self.config
            .all_paths()
            .map(|p| {
                let bytes = std::fs::read(p).ok()?;
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
                digest.as_ref().try_into().ok()
            })
            .collect()
    }

    fn load(&mut self) -> Result<Credentials, SourceError> {
        let cfg = &self.config;
        let cert = read(&cfg.cert, "certificate")?;
        let key = read(&cfg.key, "private key")?;
        let svid = X509Svid::from_pem(&cert, &key).map_err(|source| {
            let (role, path) = match &source {
                IdentityError::NoPrivateKey | IdentityError::UnsupportedKey(_) => {
                    ("private key", &cfg.key)
                }
                IdentityError::Pem { what, .. } if what.contains("key") => {
                    ("private key", &cfg.key)
                }
                IdentityError::Svid(crate::error::SvidError::KeyMismatch { .. }) => {
                    ("private key", &cfg.key)
                }
                _ => ("certificate", &cfg.cert),
            };
            SourceError::File {
                role,
                path: path.clone(),
                source: Box::new(source),
            }
        })?;
        let own_domain = svid.spiffe_id().trust_domain();
        let mut bundles = vec![read_bundle(&cfg.bundle, own_domain)?];
        for (domain, path) in &cfg.federated {
            bundles.push(read_bundle(path, domain.clone())?);
        }
        let bundles = BundleSet::from_bundles(bundles).map_err(|source| SourceError::File {
            role: "federated bundle",
            path: cfg.bundle.clone(),
            source: Box::new(source),
        })?;
        Ok(Credentials::new(svid, bundles))
    }
}

impl IdentitySource for FilesSource {
    fn name(&self) -> String {
        format!("files {}", self.config.cert.display())
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            // Snapshot first: if a file changes while we parse, the next check sees a difference.
            self.last_seen = self.read_all();
            self.load()
        })
    }

    fn changed(&mut self) -> SourceFuture<'_, ()> {
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = self.events.notified() => {
                        // Let a writer finish the set (cert, then key) before looking.
                        tokio::time::sleep(self.config.settle).await;
                    }
                    _ = self.poll.tick() => {}
                }
                if self.read_all() != self.last_seen {
                    return;
                }
            }
        })
    }
}

/// Watches the directories holding the files, not the files themselves: a rename over a file
/// replaces its inode, and a watch on the old inode would see nothing more.
fn watch_dirs(
    config: &FilesConfig,
    signal: Arc<Notify>,
) -> Result<RecommendedWatcher, SourceError> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any event, even an error, is a reason to look again (the contents decide), except a
        // file being opened or closed unwritten: our own reads cause those, and looking again on
        // them would re-read the files every `settle` forever.
        if event.as_ref().is_ok_and(|e| is_read_only_access(&e.kind)) {
            return;
        }
        signal.notify_one();
    })
    .map_err(|source| SourceError::Watch {
        path: config.cert.clone(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = config
        .all_paths()
        .map(|p| match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| SourceError::Watch { path: dir, source })?;
    }
    Ok(watcher)
}

/// An open, a read or a close without writing: no change to look for.
fn is_read_only_access(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        notify::EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn read(path: &Path, role: &'static str) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::File {
        role,
        path: path.to_path_buf(),
        source: Box::new(IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }),
    })
}

/// Reads a bundle file: a SPIFFE bundle (JWK Set, starts with `{`) or PEM certificates.
fn read_bundle(path: &Path, trust_domain: TrustDomain) -> Result<TrustBundle, SourceError> {
    let bytes = read(path, "trust bundle")?;
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if is_json {
        TrustBundle::from_spiffe_json(trust_domain, &bytes)
    } else {
        TrustBundle::from_pem(trust_domain, &bytes)
    };
    parsed.map_err(|source| SourceError::File {
        role: "trust bundle",
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    /// Reading the files (ours included) must not count as a change: the watcher would re-read
    /// them every `settle`, forever, after the first read.
    #[test]
    fn reads_are_not_changes_but_writes_and_renames_are() {
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_only_access(&EventKind::Modify(ModifyKind::Any)));
        assert!(!is_read_only_access(&EventKind::Create(CreateKind::File)));
    }
}
