//! Renewal chains: each issued certificate remembers when the chain it belongs to began (its
//! bootstrap or operator issuance), so a stolen SVID cannot be renewed forever: past the CA's
//! `max_renewal_chain`, the holder must bootstrap again, which needs a token from the operator.
//!
//! The index (serial → chain start) is built from the audit trail, which records `chain_start`
//! with every issuance, and kept current as the CA issues.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::audit::{Event, Outcome, Record};

/// Serial → chain start (RFC 3339), for every certificate in the trail.
#[derive(Debug, Default)]
pub struct Lineage {
    starts: Mutex<HashMap<String, String>>,
}

impl Lineage {
    /// The index of `records`. Records written before chains were tracked count from their own
    /// time (a renewal's chain then looks younger than it is, never older).
    pub fn from_records(records: &[Record]) -> Self {
        let lineage = Self::default();
        lineage.extend(records);
        lineage
    }

    /// Adds `records` (re-read after another process appended).
    pub fn extend(&self, records: &[Record]) {
        let Ok(mut starts) = self.starts.lock() else {
            return;
        };
        for record in records {
            let entry = &record.entry;
            if entry.outcome != Outcome::Issued || entry.event == Event::Revoke {
                continue;
            }
            if let Some(serial) = &entry.serial {
                let start = entry
                    .chain_start
                    .clone()
                    .unwrap_or_else(|| record.time.clone());
                starts.insert(serial.clone(), start);
            }
        }
    }

    /// When the chain of `serial` began, if the CA issued it.
    pub fn start_of(&self, serial: &str) -> Option<String> {
        self.starts.lock().ok()?.get(serial).cloned()
    }

    /// Records a newly issued certificate.
    pub fn insert(&self, serial: String, start: String) {
        if let Ok(mut starts) = self.starts.lock() {
            starts.insert(serial, start);
        }
    }
}
