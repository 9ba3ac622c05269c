//! Renewal chains: each issued certificate remembers when the chain it belongs to began (its
//! bootstrap or operator issuance), so a stolen SVID cannot be renewed forever: past the CA's
//! `max_renewal_chain`, the holder must bootstrap again, which needs a token from the operator.
//!
//! The index (serial → chain start) is built from the audit trail, which records `chain_start`
//! with every issuance, and kept current as the CA issues. Only certificates still valid can be
//! renewed, so expired ones are pruned: the index holds about one entry per live certificate, not
//! one per certificate ever issued.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::audit::{Event, Outcome, Record};

/// Serial → chain start, for every unexpired certificate in the trail.
#[derive(Debug, Default)]
pub struct Lineage {
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// Serial → (chain start, `not_after`), both RFC 3339.
    starts: HashMap<String, (String, String)>,
    /// Size at which expired entries are pruned next (twice the size after the last prune).
    prune_at: usize,
}

/// Entries kept before the first prune.
const MIN_PRUNE_AT: usize = 1024;

impl Lineage {
    /// The index of `records` at `now` (RFC 3339). Records written before chains were tracked
    /// count from their own time (a renewal's chain then looks younger than it is, never older).
    pub fn from_records(records: &[Record], now: &str) -> Self {
        let lineage = Self::default();
        lineage.extend(records, now);
        lineage
    }

    /// Adds `records` (re-read after another process appended).
    pub fn extend(&self, records: &[Record], now: &str) {
        let Ok(mut index) = self.index.lock() else {
            return;
        };
        for record in records {
            let entry = &record.entry;
            if entry.outcome != Outcome::Issued || entry.event == Event::Revoke {
                continue;
            }
            if let (Some(serial), Some(not_after)) = (&entry.serial, &entry.not_after) {
                let start = entry
                    .chain_start
                    .clone()
                    .unwrap_or_else(|| record.time.clone());
                index
                    .starts
                    .insert(serial.clone(), (start, not_after.clone()));
            }
        }
        index.prune(now);
    }

    /// When the chain of `serial` began, if the CA issued it and it has not expired.
    pub fn start_of(&self, serial: &str) -> Option<String> {
        let index = self.index.lock().ok()?;
        index.starts.get(serial).map(|(start, _)| start.clone())
    }

    /// Records a newly issued certificate; prunes expired entries when the index has doubled.
    pub fn insert(&self, serial: String, start: String, not_after: String, now: &str) {
        if let Ok(mut index) = self.index.lock() {
            index.starts.insert(serial, (start, not_after));
            if index.starts.len() >= index.prune_at {
                index.prune(now);
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.index.lock().map_or(0, |i| i.starts.len())
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Index {
    fn prune(&mut self, now: &str) {
        // RFC 3339 in UTC, whole seconds: text order is time order.
        self.starts
            .retain(|_, (_, not_after)| not_after.as_str() > now);
        self.prune_at = (self.starts.len() * 2).max(MIN_PRUNE_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_certificates_leave_the_index() {
        let lineage = Lineage::default();
        let t = |h: u32| format!("2026-12-07T{h:02}:00:00Z");
        for n in 0..MIN_PRUNE_AT - 1 {
            lineage.insert(format!("S{n}"), t(0), t(1), &t(0));
        }
        assert_eq!(lineage.len(), MIN_PRUNE_AT - 1, "nothing has expired yet");
        lineage.insert("LIVE".into(), t(2), t(5), &t(3));
        assert_eq!(
            lineage.len(),
            1,
            "the expired ones were pruned at the threshold"
        );
        assert_eq!(lineage.start_of("LIVE"), Some(t(2)));
        assert_eq!(lineage.start_of("S0"), None);
    }
}
