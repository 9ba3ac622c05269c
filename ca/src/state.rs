//! The CA's state directory: `config.toml` (no secrets), `root.pem`, `tokens/`, `audit.log`.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::CaError;
use crate::issue::TtlPolicy;

/// `config.toml`: what `meshguard ca init` decided. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The trust domain the CA issues for.
    pub trust_domain: String,
    /// Where the signing key lives (a PKCS#11 URI or `file:PATH`); never holds the PIN.
    pub key: String,
    /// SVID lifetime when a request names none, e.g. `"1h"`.
    pub default_ttl: String,
    /// Longest SVID lifetime the CA grants, e.g. `"24h"`.
    pub max_ttl: String,
    /// Longest a chain of renewals may run from its bootstrap before the workload must bootstrap
    /// again, e.g. `"30d"` (the default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_renewal_chain: Option<String>,
}

/// [`CaConfig::max_renewal_chain`] when the config does not say.
pub const DEFAULT_MAX_RENEWAL_CHAIN: Duration = Duration::from_secs(30 * 24 * 3600);

impl CaConfig {
    /// The longest renewal chain, parsed.
    pub fn max_renewal_chain(&self, path: &Path) -> Result<Duration, CaError> {
        self.max_renewal_chain
            .as_deref()
            .map_or(Ok(DEFAULT_MAX_RENEWAL_CHAIN), parse_duration)
            .map_err(|e| CaError::State {
                path: path.to_owned(),
                reason: format!("max_renewal_chain: {e}"),
            })
    }

    pub fn ttl_policy(&self, path: &Path) -> Result<TtlPolicy, CaError> {
        let bad = |reason: String| CaError::State {
            path: path.to_owned(),
            reason,
        };
        let default_ttl =
            parse_duration(&self.default_ttl).map_err(|e| bad(format!("default_ttl: {e}")))?;
        let max_ttl = parse_duration(&self.max_ttl).map_err(|e| bad(format!("max_ttl: {e}")))?;
        if default_ttl > max_ttl {
            return Err(bad("default_ttl is longer than max_ttl".into()));
        }
        Ok(TtlPolicy {
            default_ttl,
            max_ttl,
        })
    }
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn root_cert(&self) -> PathBuf {
        self.root.join("root.pem")
    }
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }
    pub fn revoked(&self) -> PathBuf {
        self.root.join("revoked.json")
    }
    pub fn audit(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// Creates the directory tree (mode 0700); refuses to reuse an initialised one.
    pub fn create(&self) -> Result<(), CaError> {
        if self.config().exists() {
            return Err(CaError::State {
                path: self.root.clone(),
                reason: "a CA is already initialised here; choose another --state directory".into(),
            });
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.tokens())
            .map_err(|e| CaError::io("creating the state directory", &self.root, e))
    }

    /// Reads and validates `config.toml` (errors carry the line and column).
    pub fn read_config(&self) -> Result<CaConfig, CaError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CaError::State {
                path: self.root.clone(),
                reason: "no CA here (config.toml is missing); run `meshguard ca init --state DIR ...` first".into(),
            },
            _ => CaError::io("reading the CA config", &path, e),
        })?;
        toml::from_str(&text).map_err(|e| CaError::State {
            path,
            reason: e.to_string(),
        })
    }

    pub fn write_config(&self, config: &CaConfig) -> Result<(), CaError> {
        let text = toml::to_string(config).map_err(|e| CaError::State {
            path: self.config(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# meshguard CA. No secrets here: the HSM PIN comes from the key URI's pin-source or MESHGUARD_HSM_PIN.\n{text}"
        );
        write_new(&self.config(), text.as_bytes(), 0o644)
    }
}

/// Writes a new file with `mode`, refusing to overwrite.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CaError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CaError::io("writing", path, e))
}

/// Parses a lifetime such as `90s`, `30m`, `1h`, `2h30m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .trim()
        .parse()
        .or_else(|_| {
            text.trim()
                .parse::<jiff::Span>()
                .map_err(|e| e.to_string())
                .and_then(|span| {
                    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                        .map_err(|e| e.to_string())
                })
        })
        .map_err(|e| format!("`{text}` is not a duration like 30m, 1h or 7d ({e})"))?;
    let duration =
        Duration::try_from(signed).map_err(|_| format!("`{text}` must not be negative"))?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h30m").unwrap(), Duration::from_secs(9000));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1h").is_err());
    }

    #[test]
    fn unknown_config_keys_are_refused_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::write(
            state.config(),
            "trust_domain = \"td\"\nkey = \"file:/k\"\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\npin = \"1234\"\n",
        )
        .unwrap();
        let err = state.read_config().unwrap_err().to_string();
        assert!(err.contains("line 5") && err.contains("pin"), "{err}");
    }
}
