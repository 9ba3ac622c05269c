//! Consecutive-failure circuit breaking for one endpoint, as Envoy's outlier detection and
//! linkerd2's failure accrual do it: `threshold` failures in a row eject the endpoint for a
//! back-off that doubles with each ejection (up to a cap); when it runs out, one request probes
//! the endpoint; a success closes the breaker and resets the back-off, a failure ejects again.
//!
//! No clock is read here: every call takes `now`, so the state machine is tested exactly.

use std::time::{Duration, Instant};

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Taking traffic; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Ejected until `until`.
    Open {
        /// When the probe may go.
        until: Instant,
    },
    /// The back-off ran out; one probe request is in flight or may be sent.
    HalfOpen {
        /// Whether the probe has been handed out.
        probing: bool,
    },
}

/// What a recorded outcome changed, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth saying.
    None,
    /// The endpoint was just ejected for this long.
    Ejected(Duration),
    /// A probe succeeded: the endpoint is back.
    Restored,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    state: State,
    threshold: u32,
    min: Duration,
    max: Duration,
    /// The next ejection's length.
    backoff: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, min: Duration, max: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            min,
            max,
            backoff: min,
        }
    }

    /// The state, with an expired ejection seen as half-open.
    pub fn state(&mut self, now: Instant) -> State {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen { probing: false };
        }
        self.state
    }

    /// Whether a request may be sent now; a half-open breaker hands out its one probe.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed { .. } => true,
            State::Open { .. } | State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                true
            }
        }
    }

    /// Whether a request could be sent now, without taking the probe.
    pub fn available(&mut self, now: Instant) -> bool {
        matches!(
            self.state(now),
            State::Closed { .. } | State::HalfOpen { probing: false }
        )
    }

    /// A request succeeded (any response from the endpoint).
    pub fn success(&mut self) -> Transition {
        let restored = !matches!(self.state, State::Closed { .. });
        self.state = State::Closed { failures: 0 };
        self.backoff = self.min;
        if restored {
            Transition::Restored
        } else {
            Transition::None
        }
    }

    /// A request failed (no connection, a broken connection, or no answer in time).
    pub fn failure(&mut self, now: Instant) -> Transition {
        let failures = match self.state(now) {
            State::Closed { failures } => failures + 1,
            // A failed probe, or a request that was already in flight when it was ejected.
            State::HalfOpen { .. } => self.threshold,
            State::Open { .. } => return Transition::None,
        };
        if failures < self.threshold {
            self.state = State::Closed { failures };
            return Transition::None;
        }
        let ejected_for = self.backoff;
        self.state = State::Open {
            until: now + ejected_for,
        };
        self.backoff = (self.backoff * 2).min(self.max);
        Transition::Ejected(ejected_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn threshold_failures_in_a_row_eject_and_a_success_in_between_resets() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, S, 8 * S);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.success(), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert!(b.admit(t0));
        assert_eq!(b.failure(t0), Transition::Ejected(S));
        assert!(!b.admit(t0));
        assert!(!b.available(t0 + S / 2));
    }

    #[test]
    fn one_probe_after_the_backoff_and_the_backoff_doubles_to_its_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, S, 3 * S);
        assert_eq!(b.failure(t0), Transition::Ejected(S));
        let t1 = t0 + S;
        assert!(b.available(t1));
        assert!(b.admit(t1), "the probe");
        assert!(!b.admit(t1), "only one probe at a time");
        assert_eq!(b.failure(t1), Transition::Ejected(2 * S));
        let t2 = t1 + 2 * S;
        assert!(b.admit(t2));
        assert_eq!(b.failure(t2), Transition::Ejected(3 * S), "capped");
        let t3 = t2 + 3 * S;
        assert!(b.admit(t3));
        assert_eq!(b.success(), Transition::Restored);
        assert!(b.admit(t3) && b.admit(t3), "closed: no limit");
        assert_eq!(b.failure(t3), Transition::Ejected(S), "back-off reset");
    }

    #[test]
    fn failures_while_open_do_not_extend_the_ejection() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, S, 60 * S);
        b.failure(t0);
        assert_eq!(b.failure(t0 + S / 2), Transition::None);
        assert!(b.available(t0 + S));
    }
}
