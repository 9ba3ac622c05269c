//! Verification of the whole trail: each line's own hash, its place (`seq`), its link to the line
//! before (`prev`), and the last line against `audit.head`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{GENESIS, Record, sha256_hex};
use crate::error::CaError;

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
