//! The sources' notion of "now": wall-clock time (certificates are dated in it) that advances with
//! tokio's clock, so `tokio::time::pause()` and `advance` drive renewal and expiry in tests.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Wall-clock time anchored once and then advanced by tokio's monotonic clock.
///
/// Anchoring avoids reading the system clock on every decision, so a step of the system clock
/// cannot make a renewal fire early or twice; it also makes paused-time tests work, since
/// `tokio::time::advance` moves this clock too.
#[derive(Debug, Clone, Copy)]
pub struct SourceClock {
    wall_at_anchor: SystemTime,
    mono_at_anchor: Instant,
}

impl Default for SourceClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceClock {
    /// Anchored at the system's current wall-clock time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// Anchored at a given wall-clock time (tests that want fixed dates).
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            wall_at_anchor: wall,
            mono_at_anchor: Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        self.wall_at_anchor + self.mono_at_anchor.elapsed()
    }

    /// The tokio instant at which this clock reads `wall` (now, if that is in the past).
    pub fn instant_at(&self, wall: SystemTime) -> Instant {
        let ahead = wall.duration_since(self.now()).unwrap_or(Duration::ZERO);
        Instant::now() + ahead
    }

    /// Sleeps until this clock reads `wall`.
    pub async fn sleep_until(&self, wall: SystemTime) {
        tokio::time::sleep_until(self.instant_at(wall)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn advances_with_paused_tokio_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = SourceClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        let target = start + Duration::from_secs(3600);
        clock.sleep_until(target).await;
        assert_eq!(clock.now(), target);
    }
}
