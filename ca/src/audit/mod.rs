//! The audit trail: one JSON line per issuance, renewal and refusal, hash-chained so that editing,
//! deleting or reordering a line is detected by [`verify`].
//!
//! Each line ends with `"hash"`, the SHA-256 of the line's own JSON without that field, and carries
//! `prev`, the SHA-256 of the whole previous line, and `seq`, its 1-based position. A small head
//! file (`audit.head`) records the last `seq` and line hash, so truncating or editing the last line
//! is caught as well. Appends take an exclusive file lock, so `meshguard ca issue` and a running
//! `meshguard ca serve` can share one trail.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::CaError;
use commit::GroupCommit;
pub use verify::{Broken, verify};

mod commit;
mod verify;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// First SVID for a bootstrap token.
    Bootstrap,
    /// Renewal over mTLS with the current SVID.
    Renew,
    /// Offline issuance by the operator (`meshguard ca issue`).
    Issue,
    /// The operator revoked a certificate or an identity (`meshguard ca revoke`).
    Revoke,
}

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Issued,
    Refused,
    /// A revocation was recorded.
    Revoked,
}

/// One entry, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub event: Event,
    pub outcome: Outcome,
    /// Who asked: `token:<first 8 hex of its hash>`, `mtls:<SPIFFE ID>`, `operator`, plus the address.
    pub requester: String,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    /// RFC 3339.
    pub not_after: Option<String>,
    /// Why it was refused (`code: sentence`), or `None` when issued.
    pub reason: Option<String>,
    /// A renewal: the serial of the certificate the caller presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<String>,
    /// An issued certificate: when its renewal chain began (the bootstrap or operator issuance
    /// it descends from), RFC 3339. Renewals stop once it is older than the CA allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_start: Option<String>,
}

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub prev: String,
    pub hash: String,
}

/// The file where the trail lives, appended to under a lock.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    state: Mutex<Tail>,
    commits: GroupCommit,
}

#[derive(Debug)]
struct Tail {
    file: File,
    head: File,
    /// Length of the file when we last wrote; another process appended if it differs.
    len: u64,
    seq: u64,
    last_line_hash: String,
}

impl AuditLog {
    /// Opens (creating if needed) the trail at `path` and its head file beside it.
    pub fn open(path: &Path) -> Result<Self, CaError> {
        let head_path = path.with_extension("head");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| CaError::io("opening the audit trail", path, e))?;
        let head = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .mode(0o640)
            .open(&head_path)
            .map_err(|e| CaError::io("opening the audit head", &head_path, e))?;
        let mut tail = Tail {
            file,
            head,
            len: u64::MAX,
            seq: 0,
            last_line_hash: GENESIS.to_owned(),
        };
        refresh(path, &mut tail)?;
        Ok(Self {
            path: path.to_owned(),
            head_path,
            state: Mutex::new(tail),
            commits: GroupCommit::default(),
        })
    }

    /// Appends an entry and returns once it is on disk (`fdatasync` of the trail and its head):
    /// issuance must not proceed unrecorded, so failures are errors. Blocks the calling thread;
    /// async callers run it on the blocking pool. Concurrent appends share one sync (group
    /// commit), so a burst costs one disk flush, not one per record.
    pub fn append(&self, entry: Entry, now: SystemTime) -> Result<Record, CaError> {
        self.commits
            .submit(entry, now, |batch| self.write_batch(batch))
            .map_err(|reason| CaError::Audit {
                path: self.path.clone(),
                reason,
            })
    }

    /// Disk flushes so far (each covers one or more records).
    pub fn commits(&self) -> u64 {
        self.commits.count()
    }

    /// Writes `batch` as consecutive lines with one write and one sync, under the file lock.
    fn write_batch(&self, batch: &[(Entry, SystemTime)]) -> Vec<Result<Record, String>> {
        let mut tail = match self.state.lock() {
            Ok(tail) => tail,
            Err(_) => return vec![Err("the audit lock was poisoned".into()); batch.len()],
        };
        // flock(2): excludes other processes (`meshguard ca issue` next to `ca serve`).
        if let Err(e) = tail.file.lock() {
            return vec![Err(format!("cannot lock: {e}")); batch.len()];
        }
        let written = self.write_locked(&mut tail, batch);
        let _unlocked = tail.file.unlock();
        match written {
            Ok(records) => records,
            Err(reason) => {
                // What reached the file is unknown: re-read it before the next append.
                tail.len = u64::MAX;
                vec![Err(reason); batch.len()]
            }
        }
    }

    fn write_locked(
        &self,
        tail: &mut Tail,
        batch: &[(Entry, SystemTime)],
    ) -> Result<Vec<Result<Record, String>>, String> {
        let len = tail.file.metadata().map_err(|e| e.to_string())?.len();
        if len != tail.len {
            refresh(&self.path, tail).map_err(|e| e.to_string())?;
        }
        let (mut seq, mut last_line_hash) = (tail.seq, tail.last_line_hash.clone());
        let mut lines = String::new();
        let mut records = Vec::with_capacity(batch.len());
        for (entry, now) in batch {
            let body = Body {
                seq: seq + 1,
                time: timestamp(*now),
                entry,
                prev: &last_line_hash,
            };
            let body_json = match serde_json::to_string(&body) {
                Ok(json) => json,
                Err(e) => {
                    records.push(Err(e.to_string()));
                    continue;
                }
            };
            let hash = sha256_hex(body_json.as_bytes());
            let line = format!(
                "{},\"hash\":\"{hash}\"}}",
                &body_json[..body_json.len() - 1]
            );
            records.push(Ok(Record {
                seq: body.seq,
                time: body.time.clone(),
                entry: entry.clone(),
                prev: last_line_hash.clone(),
                hash,
            }));
            seq = body.seq;
            last_line_hash = sha256_hex(line.as_bytes());
            lines.push_str(&line);
            lines.push('\n');
        }
        tail.file
            .write_all(lines.as_bytes())
            .and_then(|()| tail.file.sync_data())
            .map_err(|e| format!("cannot write and sync the trail: {e}"))?;
        let head = format!("{seq:020} {last_line_hash}\n");
        tail.head
            .write_all_at(head.as_bytes(), 0)
            .and_then(|()| tail.head.sync_data())
            .map_err(|e| format!("{}: {e}", self.head_path.display()))?;
        tail.seq = seq;
        tail.last_line_hash = last_line_hash;
        tail.len = len + lines.len() as u64;
        Ok(records)
    }

    /// All records, for `meshguard ca list` (unverified; run [`verify`] to check them).
    pub fn records(&self) -> Result<Vec<Record>, CaError> {
        read_records(&self.path)
    }
}

/// The record body as serialised before its own hash is appended.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    entry: &'a Entry,
    prev: &'a str,
}

/// Re-reads the end of the trail (another process appended, or we just opened it).
fn refresh(path: &Path, tail: &mut Tail) -> Result<(), CaError> {
    let file = File::open(path).map_err(|e| CaError::io("reading the audit trail", path, e))?;
    let mut len = 0u64;
    let mut count = 0u64;
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| CaError::io("reading the audit trail", path, e))?;
        len += line.len() as u64 + 1;
        count += 1;
        last = Some(line);
    }
    tail.len = len;
    match last {
        Some(line) => {
            let record: Record = serde_json::from_str(&line).map_err(|e| CaError::Audit {
                path: path.to_owned(),
                reason: format!(
                    "the last line is not a record ({e}); run `meshguard ca audit verify`"
                ),
            })?;
            tail.seq = record.seq.max(count);
            tail.last_line_hash = sha256_hex(line.as_bytes());
        }
        None => {
            tail.seq = 0;
            tail.last_line_hash = GENESIS.to_owned();
        }
    }
    Ok(())
}

fn read_records(path: &Path) -> Result<Vec<Record>, CaError> {
    let file = File::open(path).map_err(|e| CaError::io("reading the audit trail", path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CaError::io("reading the audit trail", path, e))?;
        let record = serde_json::from_str(&line).map_err(|e| CaError::Audit {
            path: path.to_owned(),
            reason: format!("line {} is not a record: {e}", i + 1),
        })?;
        out.push(record);
    }
    Ok(out)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// RFC 3339 in UTC, whole seconds.
pub fn timestamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.round(jiff::Unit::Second).unwrap_or(ts).to_string())
        .unwrap_or_else(|_| "invalid-time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> Entry {
        Entry {
            event: Event::Bootstrap,
            outcome: if i.is_multiple_of(3) {
                Outcome::Refused
            } else {
                Outcome::Issued
            },
            requester: format!("token:{i:08x}"),
            spiffe_id: Some(format!("spiffe://td/w{i}")),
            serial: Some(format!("{i:032X}")),
            not_after: Some("2026-01-01T00:00:00Z".into()),
            reason: (i.is_multiple_of(3))
                .then(|| "token_used: the bootstrap token was already used".into()),
            renewed_from: None,
            chain_start: None,
        }
    }

    fn trail(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for i in 1..=n {
            log.append(entry(i), SystemTime::now()).unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn an_intact_trail_verifies_and_survives_reopening() {
        let (_dir, path) = trail(5);
        assert_eq!(verify(&path).unwrap(), Ok(5));
        // A second writer (another process in practice) continues the same chain.
        let log = AuditLog::open(&path).unwrap();
        log.append(entry(6), SystemTime::now()).unwrap();
        assert_eq!(verify(&path).unwrap(), Ok(6));
        assert_eq!(log.records().unwrap().len(), 6);
    }

    #[test]
    fn an_edited_line_is_named() {
        for target in [1usize, 3, 5] {
            let (_dir, path) = trail(5);
            let mut l = lines(&path);
            l[target - 1] = l[target - 1].replace("spiffe://td/w", "spiffe://td/evil");
            write(&path, &l);
            assert_eq!(verify(&path).unwrap().unwrap_err().line, target as u64);
        }
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_is_still_named() {
        let (_dir, path) = trail(5);
        let mut l = lines(&path);
        let line = &l[2];
        let at = line.rfind(",\"hash\":").unwrap();
        let body = line[..at].replace("spiffe://td/w3", "spiffe://td/evil") + "}";
        let hash = sha256_hex(body.as_bytes());
        l[2] = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
        write(&path, &l);
        assert_eq!(verify(&path).unwrap().unwrap_err().line, 3);
    }

    #[test]
    fn a_deleted_line_is_named() {
        for target in [1usize, 3, 5] {
            let (_dir, path) = trail(5);
            let mut l = lines(&path);
            l.remove(target - 1);
            write(&path, &l);
            assert_eq!(
                verify(&path).unwrap().unwrap_err().line,
                target as u64,
                "deleted {target}"
            );
        }
    }

    #[test]
    fn reordered_lines_are_named() {
        let (_dir, path) = trail(5);
        let mut l = lines(&path);
        l.swap(1, 2);
        write(&path, &l);
        let broken = verify(&path).unwrap().unwrap_err();
        assert_eq!(broken.line, 2);
        assert!(broken.reason.contains("reordered"), "{}", broken.reason);
    }

    #[test]
    fn concurrent_appends_share_syncs_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = std::sync::Arc::new(AuditLog::open(&path).unwrap());
        let threads: Vec<_> = (1..=64)
            .map(|i| {
                let log = log.clone();
                std::thread::spawn(move || log.append(entry(i), SystemTime::now()).unwrap())
            })
            .collect();
        let mut seqs: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap().seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=64).collect::<Vec<_>>(),
            "each appender got its own record"
        );
        assert_eq!(verify(&path).unwrap(), Ok(64));
        let commits = log.commits();
        assert!((1..=64).contains(&commits), "{commits} syncs");
        // A second handle (another process, as `meshguard ca issue`) continues the same chain.
        AuditLog::open(&path)
            .unwrap()
            .append(entry(65), SystemTime::now())
            .unwrap();
        assert_eq!(verify(&path).unwrap(), Ok(65));
    }
}
