//! The live policy revision. Loading and compiling happen off the request path; the compiled set is
//! swapped in atomically (arc-swap), so a request sees either the old or the new revision, never a
//! mix. A reload that fails keeps the last good revision and reports file, line and error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::PolicyError;
use crate::decision::Decision;
use crate::request::Request;
use crate::set::PolicySet;
use crate::sources::Sources;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub revision: Arc<str>,
    /// False when the sources were byte-for-byte the same (nothing swapped).
    pub changed: bool,
}

/// The current compiled revision and where it came from.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<PolicySet>,
    files: Vec<PathBuf>,
    break_glass: Option<PathBuf>,
    /// Every file of the current revision (policy files, Rego modules, grants).
    watched: Mutex<Vec<PathBuf>>,
}

impl PolicyStore {
    /// Loads and compiles `files` (and the optional break-glass grants file).
    pub fn load(files: Vec<PathBuf>, break_glass: Option<PathBuf>) -> Result<Self, PolicyError> {
        let sources = Sources::read(&files, break_glass.as_deref())?;
        let set = PolicySet::compile(&sources)?;
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            files,
            break_glass,
            watched: Mutex::new(sources.paths()),
        })
    }

    /// A store over an already compiled set (tests, embedded policies); `reload` keeps it.
    pub fn from_set(set: PolicySet) -> Self {
        Self {
            current: ArcSwap::from_pointee(set),
            files: Vec::new(),
            break_glass: None,
            watched: Mutex::new(Vec::new()),
        }
    }

    /// The current revision; hold it for as long as one decision (or one connection) needs it.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Decides `req` under the current revision.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        self.current.load().evaluate(req)
    }

    pub fn revision(&self) -> Arc<str> {
        self.current.load().revision().clone()
    }

    /// The grants file, when one is configured.
    pub fn break_glass_file(&self) -> Option<&Path> {
        self.break_glass.as_deref()
    }

    /// The files the current revision was built from.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        self.watched.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Re-reads and recompiles the files; swaps only a fully compiled, different revision. On
    /// error the current revision stays and the error (with file:line:column) is returned and
    /// logged.
    pub fn reload(&self) -> Result<Reloaded, PolicyError> {
        if self.files.is_empty() {
            return Ok(Reloaded {
                revision: self.revision(),
                changed: false,
            });
        }
        let compiled = Sources::read(&self.files, self.break_glass.as_deref())
            .and_then(|sources| Ok((PolicySet::compile(&sources)?, sources.paths())));
        match compiled {
            Ok((set, paths)) => {
                let revision = set.revision().clone();
                if revision == *self.current.load().revision() {
                    return Ok(Reloaded {
                        revision,
                        changed: false,
                    });
                }
                self.current.store(Arc::new(set));
                if let Ok(mut watched) = self.watched.lock() {
                    *watched = paths;
                }
                tracing::info!(%revision, "policy reloaded");
                Ok(Reloaded {
                    revision,
                    changed: true,
                })
            }
            Err(error) => {
                tracing::error!(%error, revision = %self.revision(), "policy reload failed; keeping the last good revision");
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    const GOOD: &str = "[[policy]]\nname = \"gets\"\naction = \"allow\"\nmethods = [\"GET\"]\n";

    fn get() -> Request<'static> {
        let mut r = Request::connection("2026-11-23T10:00:00Z".parse().unwrap());
        r.method = Some("GET");
        r
    }

    #[test]
    fn broken_reload_keeps_the_last_good_revision() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, GOOD).unwrap();
        let store = PolicyStore::load(vec![file.clone()], None).unwrap();
        let good = store.revision();
        assert_eq!(store.evaluate(&get()).outcome, Outcome::Allow);
        assert_eq!(
            store.reload().unwrap(),
            Reloaded {
                revision: good.clone(),
                changed: false
            }
        );

        std::fs::write(&file, format!("{GOOD}metods = [\"POST\"]\n")).unwrap();
        let err = store.reload().unwrap_err();
        let at = err.location().unwrap();
        assert_eq!((at.line, at.column), (5, 1), "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert_eq!(store.revision(), good);
        let d = store.evaluate(&get());
        assert_eq!(
            (d.outcome, d.revision.clone()),
            (Outcome::Allow, good.clone())
        );

        // A missing Rego module is an error too, and also keeps the revision.
        std::fs::write(&file, format!("{GOOD}rego = \"missing.rego\"\n")).unwrap();
        let err = store.reload().unwrap_err();
        assert_eq!(err.location().map(|at| at.line), Some(5), "{err}");
        assert_eq!(store.revision(), good);

        std::fs::write(&file, GOOD.replace("GET", "POST")).unwrap();
        let reloaded = store.reload().unwrap();
        assert!(reloaded.changed && reloaded.revision != good);
        assert_eq!(store.evaluate(&get()).outcome, Outcome::Deny);
        assert_eq!(store.evaluate(&get()).revision, reloaded.revision);
    }
}
