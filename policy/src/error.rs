//! The crate's one error type: every error a user can cause names the file, line and column and says
//! what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in which file something went wrong, printed as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `source`, read from `file`.
    pub fn at_offset(file: &Path, source: &str, offset: usize) -> Self {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Self {
            file: file.display().to_string(),
            line,
            column,
        }
    }

    /// The start of `file`, for errors that belong to the whole file.
    pub fn file_start(file: &Path) -> Self {
        Self {
            file: file.display().to_string(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Everything that can go wrong loading, compiling or using policies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check that the path exists and is readable", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A policy, cases or break-glass file is not valid.
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    /// A Rego module does not parse, is not Rego v1, or does not compile.
    #[error("{at}: {message}")]
    Rego { at: Location, message: String },
    /// A request document (JSON) is not valid.
    #[error("invalid request: {message}")]
    Request { message: String },
    /// A break-glass grant was refused.
    #[error("break-glass grant refused: {message}")]
    BreakGlass { message: String },
    /// The file watcher could not be started.
    #[error("cannot watch policy files: {source}; the last loaded revision stays in force")]
    Watch {
        #[source]
        source: notify::Error,
    },
}

impl PolicyError {
    /// Where the error is, when it has a place in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Invalid { at, .. } | Self::Rego { at, .. } => Some(at),
            _ => None,
        }
    }

    pub(crate) fn invalid(at: Location, message: impl Into<String>) -> Self {
        Self::Invalid {
            at,
            message: message.into(),
        }
    }

    /// Turns a TOML/serde error into one with `file:line:column`.
    pub(crate) fn from_toml(file: &Path, source: &str, error: &toml::de::Error) -> Self {
        let at = match error.span() {
            Some(span) => Location::at_offset(file, source, span.start),
            None => Location::file_start(file),
        };
        Self::invalid(at, error.message().trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let src = "a = 1\nbb = 2\n";
        let at = Location::at_offset(Path::new("p.toml"), src, 9);
        assert_eq!(at.to_string(), "p.toml:2:4");
        assert_eq!(
            Location::at_offset(Path::new("p"), src, 0).to_string(),
            "p:1:1"
        );
    }
}
