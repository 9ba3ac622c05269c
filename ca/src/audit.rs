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
}

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Issued,
    Refused,
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
        })
    }

    /// Appends an entry; issuance must not proceed unrecorded, so failures are errors.
    pub fn append(&self, entry: Entry, now: SystemTime) -> Result<Record, CaError> {
        let fail = |reason: String| CaError::Audit {
            path: self.path.clone(),
            reason,
        };
        let mut tail = self
            .state
            .lock()
            .map_err(|_| fail("the audit lock was poisoned".into()))?;
        // flock(2): excludes other processes (`meshguard ca issue` next to `ca serve`).
        tail.file
            .lock()
            .map_err(|e| fail(format!("cannot lock: {e}")))?;
        let result = (|| {
            let len = tail.file.metadata().map_err(|e| fail(e.to_string()))?.len();
            if len != tail.len {
                refresh(&self.path, &mut tail)?;
            }
            let prev = tail.last_line_hash.clone();
            let body = Body {
                seq: tail.seq + 1,
                time: timestamp(now),
                entry: &entry,
                prev: &prev,
            };
            let body_json = serde_json::to_string(&body).map_err(|e| fail(e.to_string()))?;
            let hash = sha256_hex(body_json.as_bytes());
            let line = format!(
                "{},\"hash\":\"{hash}\"}}",
                &body_json[..body_json.len() - 1]
            );
            tail.file
                .write_all(format!("{line}\n").as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            let record = Record {
                seq: body.seq,
                time: body.time.clone(),
                entry: entry.clone(),
                prev: body.prev.to_owned(),
                hash,
            };
            tail.seq = record.seq;
            tail.last_line_hash = sha256_hex(line.as_bytes());
            tail.len = len + line.len() as u64 + 1;
            let head = format!("{:020} {}\n", tail.seq, tail.last_line_hash);
            tail.head
                .write_all_at(head.as_bytes(), 0)
                .map_err(|e| fail(format!("{}: {e}", self.head_path.display())))?;
            Ok(record)
        })();
        let _unlocked = tail.file.unlock();
        result
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

/// Where the trail stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// 1-based line number of the first altered, missing or out-of-order record.
    pub line: u64,
    pub reason: String,
}

/// Checks the whole trail; `Ok(n)` is the number of intact records.
pub fn verify(path: &Path) -> Result<Result<u64, Broken>, CaError> {
    let file = File::open(path).map_err(|e| CaError::io("reading the audit trail", path, e))?;
    let head_path = path.with_extension("head");
    let head = std::fs::read_to_string(&head_path).unwrap_or_default();
    let mut prev_hash = GENESIS.to_owned();
    let mut line_no = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| CaError::io("reading the audit trail", path, e))?;
        line_no += 1;
        let broken = |reason: String| {
            Ok(Err(Broken {
                line: line_no,
                reason,
            }))
        };
        let Ok(record) = serde_json::from_str::<Record>(&line) else {
            return broken("altered: the line is not a valid record".into());
        };
        let suffix = format!(",\"hash\":\"{}\"}}", record.hash);
        let own_ok = line
            .strip_suffix(&suffix)
            .is_some_and(|body| sha256_hex(format!("{body}}}").as_bytes()) == record.hash);
        if !own_ok {
            return broken("altered: the record's content no longer matches its hash".into());
        }
        if record.seq != line_no {
            return broken(format!(
                "expected record {line_no} but found record {}: a record is missing or the lines were reordered",
                record.seq
            ));
        }
        if record.prev != prev_hash {
            // This record is intact and in place, so the one before it was rewritten.
            return Ok(Err(Broken {
                line: line_no - 1,
                reason: format!(
                    "altered: record {} no longer matches the hash recorded in line {line_no}",
                    line_no - 1
                ),
            }));
        }
        prev_hash = sha256_hex(line.as_bytes());
    }
    if let Some((seq, hash)) = head.trim().split_once(' ') {
        let seq: u64 = seq.parse().unwrap_or(0);
        if seq > line_no {
            return Ok(Err(Broken {
                line: line_no + 1,
                reason: format!(
                    "missing: the trail ends at record {line_no} but {seq} were written"
                ),
            }));
        }
        if seq == line_no && hash != prev_hash {
            return Ok(Err(Broken {
                line: line_no,
                reason: "altered: the last record no longer matches audit.head".into(),
            }));
        }
    } else if line_no > 0 {
        return Ok(Err(Broken {
            line: line_no,
            reason: format!("{} is missing or empty", head_path.display()),
        }));
    }
    Ok(Ok(line_no))
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
}
