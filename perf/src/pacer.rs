//! The open-loop pacer: it releases one "ticket" per request at that request's intended send time,
//! whether or not the target has answered the earlier ones. Workers take tickets in order, so when
//! every worker is stuck behind a slow target the tickets pile up, and each request's latency, which
//! is measured from its intended send time, includes the time it waited (no coordinated omission).
//!
//! The precise pacer is a dedicated OS thread: tokio's timer has millisecond granularity, which
//! would add up to a millisecond of generator-made latency to every request and drown the tenths of
//! a millisecond a proxy adds. A thread sleeping to the exact instant is late by tens of µs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How the pacer waits for each intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacerClock {
    /// A dedicated thread sleeping on the OS clock: precise to tens of microseconds.
    #[default]
    Precise,
    /// A tokio task on tokio's timer: millisecond granularity, but follows `tokio::time::pause()`,
    /// so tests can drive the scheduler with simulated time.
    Tokio,
}

/// The fixed schedule of an open-loop run: request `i` is intended at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Intended send time of request 0.
    pub start: Instant,
    /// Requests per second.
    pub rate: f64,
    /// How many requests the run sends in total.
    pub count: u64,
}

impl Schedule {
    /// A schedule of `rate` requests per second for `duration`, starting at `start`.
    pub fn new(start: Instant, rate: f64, duration: Duration) -> Self {
        // Rounded so that 500/s for 1 s is exactly 500 requests; at least one request.
        let count = ((rate * duration.as_secs_f64()).round() as u64).max(1);
        Schedule { start, rate, count }
    }

    /// The offset of request `i` from the start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The intended send time of request `i`.
    pub fn intended(&self, i: u64) -> Instant {
        self.start + self.offset(i)
    }

    /// How many requests are due `elapsed` after the start (capped at the total).
    fn due(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        due.min(self.count)
    }
}

/// Linux oversleeps by the thread's timer slack (50 µs by default); sleeping until shortly before
/// and yielding for the rest lands within a few µs, at the cost of at most this much CPU per request.
const SPIN: Duration = Duration::from_micros(60);

fn sleep_precisely_until(deadline: std::time::Instant) {
    let now = std::time::Instant::now();
    if deadline > now + SPIN {
        std::thread::sleep(deadline - now - SPIN);
    }
    while std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
}

/// Starts releasing tickets on `tickets` following `schedule`; after the last one it releases
/// `wake_extra` more so that every idle worker wakes up, finds the schedule exhausted and stops.
/// Fails only when the OS refuses a new thread.
pub fn spawn(
    schedule: Schedule,
    tickets: Arc<Semaphore>,
    wake_extra: usize,
    clock: PacerClock,
) -> std::io::Result<()> {
    match clock {
        PacerClock::Precise => {
            let start = schedule.start.into_std();
            std::thread::Builder::new()
                .name("meshguard-perf-pacer".into())
                .spawn(move || {
                    let mut released = 0;
                    while released < schedule.count {
                        sleep_precisely_until(start + schedule.offset(released));
                        // Release everything due by now at once: if the thread woke late, the
                        // late requests still carry their original intended times. At least the
                        // one slept for is due, whatever the float rounding of its offset.
                        let due = schedule.due(start.elapsed()).max(released + 1);
                        tickets.add_permits(usize::try_from(due - released).unwrap_or(usize::MAX));
                        released = due;
                    }
                    tickets.add_permits(wake_extra);
                })?;
        }
        PacerClock::Tokio => {
            tokio::spawn(async move {
                let mut released = 0;
                while released < schedule.count {
                    tokio::time::sleep_until(schedule.intended(released)).await;
                    // At least the one slept for is due, whatever the float rounding of its offset.
                    let due = schedule.due(schedule.start.elapsed()).max(released + 1);
                    tickets.add_permits(usize::try_from(due - released).unwrap_or(usize::MAX));
                    released = due;
                }
                tickets.add_permits(wake_extra);
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_and_spacing() {
        let start = Instant::now();
        let s = Schedule::new(start, 500.0, Duration::from_secs(1));
        assert_eq!(s.count, 500);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.offset(250), Duration::from_millis(500));
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_micros(1999)), 1);
        assert_eq!(s.due(Duration::from_millis(2)), 2);
        assert_eq!(s.due(Duration::from_secs(5)), 500);
        assert_eq!(Schedule::new(start, 0.1, Duration::from_secs(1)).count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_pacer_releases_on_schedule() {
        let tickets = Arc::new(Semaphore::new(0));
        let s = Schedule::new(Instant::now(), 100.0, Duration::from_millis(100));
        spawn(s, Arc::clone(&tickets), 3, PacerClock::Tokio).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(tickets.available_permits(), 1);
        tokio::time::sleep(Duration::from_millis(45)).await;
        assert_eq!(tickets.available_permits(), 5);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(tickets.available_permits(), 10 + 3);
    }

    #[tokio::test]
    async fn precise_pacer_releases_every_ticket() {
        let tickets = Arc::new(Semaphore::new(0));
        let s = Schedule::new(Instant::now(), 1000.0, Duration::from_millis(20));
        spawn(s, Arc::clone(&tickets), 2, PacerClock::Precise).unwrap();
        let all = tickets.acquire_many(22).await.unwrap();
        all.forget();
        // The last ticket is intended 19 ms after the start and never released before.
        assert!(s.start.elapsed() >= Duration::from_millis(19));
        assert_eq!(tickets.available_permits(), 0);
    }
}
