//! Group commit: concurrent appenders queue their entries; whichever finds no write in progress
//! becomes the leader, writes everything queued with one write and one sync, and hands each
//! appender its own result. A burst of N refusals costs a handful of flushes, not N, and every
//! appender still returns only once its record is on disk.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use super::{Entry, Record};

/// The queue and the results of one trail.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
    written: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    /// Waiting to be written, in arrival order.
    pending: Vec<(u64, Entry, SystemTime)>,
    /// Written (or failed), not yet collected by their appender.
    results: HashMap<u64, Result<Record, String>>,
    /// A leader is writing (outside the lock).
    writing: bool,
    commits: u64,
}

impl GroupCommit {
    /// Queues `entry` and waits until a leader (perhaps this caller) has run `write` over a batch
    /// containing it. `write` returns one result per entry, in order.
    pub(super) fn submit(
        &self,
        entry: Entry,
        now: SystemTime,
        write: impl Fn(&[(Entry, SystemTime)]) -> Vec<Result<Record, String>>,
    ) -> Result<Record, String> {
        let mut queue = self.lock()?;
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, entry, now));
        loop {
            if let Some(result) = queue.results.remove(&ticket) {
                return result;
            }
            if queue.writing {
                queue = self
                    .written
                    .wait(queue)
                    .map_err(|_| "the audit queue lock was poisoned".to_owned())?;
                continue;
            }
            queue.writing = true;
            let batch = std::mem::take(&mut queue.pending);
            drop(queue);
            let (tickets, entries): (Vec<u64>, Vec<(Entry, SystemTime)>) = batch
                .into_iter()
                .map(|(ticket, entry, now)| (ticket, (entry, now)))
                .unzip();
            // A panicking writer must not leave `writing` set and every later appender waiting.
            let results =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(&entries)))
                    .unwrap_or_else(|_| {
                        vec![Err("the audit writer panicked".to_owned()); entries.len()]
                    });
            queue = self.lock()?;
            queue.writing = false;
            queue.commits += 1;
            let mut results = results.into_iter();
            for ticket in tickets {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err("the audit writer lost a record".to_owned()));
                queue.results.insert(ticket, result);
            }
            self.written.notify_all();
        }
    }

    /// Batches written so far.
    pub(super) fn count(&self) -> u64 {
        self.queue.lock().map_or(0, |q| q.commits)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Queue>, String> {
        self.queue
            .lock()
            .map_err(|_| "the audit queue lock was poisoned".to_owned())
    }
}
