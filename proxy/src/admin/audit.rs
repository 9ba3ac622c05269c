//! The control surface's audit trail: one JSON line per control call, written and fsync'd before
//! the call takes effect. No line, no action: when the line cannot be made durable the call is
//! refused, so an auditor never finds an effect without its record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An append-only, fsync'd JSON-lines file.
#[derive(Clone, Debug)]
pub struct ControlAudit {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl ControlAudit {
    /// Opens (creating, appending) `path`; the error says which file and why.
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and waits until it is on disk. Runs on the blocking pool so an
    /// fsync never stalls the async workers.
    pub async fn record(&self, record: serde_json::Value) -> Result<(), std::io::Error> {
        let file = self.file.clone();
        let mut line = record.to_string().into_bytes();
        line.push(b'\n');
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another write panicked; the file handle is still good.
            let mut file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-audit.log");
        let audit = ControlAudit::open(&path).unwrap();
        audit.record(serde_json::json!({"n": 1})).await.unwrap();
        let again = ControlAudit::open(&path).unwrap();
        again.record(serde_json::json!({"n": 2})).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
    }
}
