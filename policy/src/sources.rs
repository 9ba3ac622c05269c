//! Reading policy sources from disk: the policy files, the Rego modules they name and an optional
//! break-glass grants file. This is the only module besides the watcher that touches the file
//! system; everything else compiles from the [`Sources`] it returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

use crate::spec::FileSpec;
use crate::{Location, PolicyError};

/// One file's path and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Everything a policy set compiles from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub policies: Vec<SourceFile>,
    /// Rego modules by the path the policy file's `rego` key resolves to.
    pub rego: BTreeMap<PathBuf, String>,
    pub break_glass: Option<SourceFile>,
}

impl Sources {
    /// Sources held in memory (tests, the CLI's `--input` documents).
    pub fn from_texts(policies: impl IntoIterator<Item = (PathBuf, String)>) -> Self {
        Self {
            policies: policies
                .into_iter()
                .map(|(path, text)| SourceFile { path, text })
                .collect(),
            ..Self::default()
        }
    }

    /// Reads `paths` and the Rego modules they reference, and `break_glass` when given (a missing
    /// grants file is an empty one).
    pub fn read(paths: &[PathBuf], break_glass: Option<&Path>) -> Result<Self, PolicyError> {
        let mut sources = Self::default();
        for path in paths {
            let text = read(path)?;
            sources.policies.push(SourceFile {
                path: path.clone(),
                text,
            });
        }
        for (rego_path, named_at) in sources.rego_refs()? {
            if let std::collections::btree_map::Entry::Vacant(slot) = sources.rego.entry(rego_path)
            {
                // Point at the policy file line that names the module: that is what to fix.
                let text = std::fs::read_to_string(slot.key()).map_err(|e| {
                    PolicyError::invalid(
                        named_at,
                        format!(
                            "cannot read Rego module {}: {e}; check the `rego` path (relative to \
                             this file)",
                            slot.key().display()
                        ),
                    )
                })?;
                slot.insert(text);
            }
        }
        if let Some(path) = break_glass {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(source) => {
                    return Err(PolicyError::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            sources.break_glass = Some(SourceFile {
                path: path.to_owned(),
                text,
            });
        }
        Ok(sources)
    }

    /// The Rego module paths the policy files name, resolved against each file's directory.
    pub fn rego_paths(&self) -> Result<Vec<PathBuf>, PolicyError> {
        Ok(self
            .rego_refs()?
            .into_iter()
            .map(|(path, _)| path)
            .collect())
    }

    /// The Rego module paths with where each is named.
    fn rego_refs(&self) -> Result<Vec<(PathBuf, Location)>, PolicyError> {
        let mut out = Vec::new();
        for file in &self.policies {
            let spec = FileSpec::parse(&file.path, &file.text)?;
            for policy in &spec.policy {
                if let Some(rego) = &policy.rego {
                    out.push((
                        resolve(&file.path, rego.get_ref()),
                        crate::spec::location(&file.path, &file.text, rego),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every file this set depends on (what a watcher watches).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.policies.iter().map(|f| f.path.clone()).collect();
        out.extend(self.rego.keys().cloned());
        out.extend(self.break_glass.as_ref().map(|f| f.path.clone()));
        out
    }

    /// The revision: SHA-256 over every file's path and contents, hex.
    pub fn revision(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut add = |kind: &str, path: &Path, text: &str| {
            for part in [
                kind.as_bytes(),
                path.to_string_lossy().as_bytes(),
                text.as_bytes(),
            ] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
        };
        for f in &self.policies {
            add("policy", &f.path, &f.text);
        }
        for (path, text) in &self.rego {
            add("rego", path, text);
        }
        if let Some(f) = &self.break_glass {
            add("break-glass", &f.path, &f.text);
        }
        hex::encode(ctx.finish().as_ref())
    }
}

/// A `rego` path relative to the policy file's directory.
pub(crate) fn resolve(policy_file: &Path, rego: &str) -> PathBuf {
    let rego = Path::new(rego);
    if rego.is_absolute() {
        return rego.to_owned();
    }
    policy_file
        .parent()
        .map_or_else(|| rego.to_owned(), |dir| dir.join(rego))
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_rego_module_points_at_the_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.toml");
        std::fs::write(
            &policy,
            "[[policy]]\nname = \"r\"\naction = \"allow\"\nrego = \"missing.rego\"\n",
        )
        .unwrap();
        let err = Sources::read(std::slice::from_ref(&policy), None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:4:8: ", policy.display())),
            "{text}"
        );
        assert!(text.contains("missing.rego"), "{text}");
        assert_eq!(err.location().map(|at| at.line), Some(4));
    }
}
