//! When to renew a certificate and when to try again after a failure: pure logic, time as input.
//!
//! SPIRE's rule (see ANCHORS.md) is followed: renew at half of the certificate's lifetime, moved by a
//! random ±10 % so that a fleet issued at the same moment does not come back to its CA at the same
//! moment. A failed renewal is retried with capped exponential backoff (also jittered), never later
//! than the certificate's expiry, and the current certificate keeps serving until it expires; after
//! that the schedule says "expired: stop serving" and keeps retrying.
//!
//! Nothing here reads a clock or sleeps: callers pass `now` and act on the returned [`Step`]. The
//! randomness comes from an injected seedable rng so tests are deterministic.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The validity window of a certificate: what the schedule needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// The certificate's total lifetime; zero when the window is empty or inverted.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the certificate may still be served at `now` (`not_after` itself is still valid, as
    /// in RFC 5280).
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now >= self.not_before && now <= self.not_after
    }
}

/// Tunables of the schedule. The defaults are SPIRE's: half-life, ±10 %, 1 s doubling to 5 min.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Fraction of the lifetime after `not_before` at which to renew (0.5 = half-life).
    pub renew_fraction: f64,
    /// Relative jitter applied to the renewal delay and to each backoff delay (0.1 = ±10 %).
    pub jitter: f64,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Largest retry delay; the doubling stops here.
    pub backoff_max: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_fraction: 0.5,
            jitter: 0.1,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
        }
    }
}

impl RenewalPolicy {
    /// Clamps fields into meaningful ranges, so a bad config cannot produce a nonsensical schedule
    /// (e.g. renewing after expiry or a zero backoff that spins).
    fn sanitized(self) -> Self {
        let renew_fraction = if self.renew_fraction.is_finite() {
            self.renew_fraction.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 0.5)
        } else {
            0.1
        };
        let backoff_initial = self.backoff_initial.max(Duration::from_millis(10));
        let backoff_max = self.backoff_max.max(backoff_initial);
        Self {
            renew_fraction,
            jitter,
            backoff_initial,
            backoff_max,
        }
    }
}

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The credentials are fresh: serve them and renew at `at`.
    Renew { at: SystemTime },
    /// The last attempt failed but the current certificate is still valid: keep serving it and
    /// try again at `at` (never later than its expiry).
    Retry { at: SystemTime },
    /// There is no valid certificate (it expired, or none was ever obtained): serve no traffic,
    /// try again at `retry_at`.
    Expired { retry_at: SystemTime },
}

impl Step {
    /// The moment the caller should next act.
    pub fn at(&self) -> SystemTime {
        match *self {
            Step::Renew { at } | Step::Retry { at } => at,
            Step::Expired { retry_at } => retry_at,
        }
    }

    /// Whether a certificate may be served until [`Step::at`].
    pub fn is_serving(&self) -> bool {
        !matches!(self, Step::Expired { .. })
    }
}

/// Capped exponential backoff with jitter; also used on its own by reconnecting sources.
#[derive(Debug)]
pub struct Backoff {
    policy: RenewalPolicy,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(policy: RenewalPolicy, rng: StdRng) -> Self {
        Self {
            policy: policy.sanitized(),
            failures: 0,
            rng,
        }
    }

    /// Consecutive failures recorded since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and returns how long to wait before the next attempt: the initial delay
    /// doubled per consecutive failure, capped, then jittered by ±`jitter` (and capped again).
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(32);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.policy.backoff_max);
        let factor = 1.0 + self.jitter_sample();
        base.mul_f64(factor).min(self.policy.backoff_max)
    }

    fn jitter_sample(&mut self) -> f64 {
        let j = self.policy.jitter;
        self.rng.random_range(-j..=j)
    }
}

/// The renewal state machine for one identity: feed it outcomes, it answers with the next [`Step`].
#[derive(Debug)]
pub struct RenewalSchedule {
    policy: RenewalPolicy,
    current: Option<Validity>,
    backoff: Backoff,
}

impl RenewalSchedule {
    /// A schedule with no credentials yet, jitter drawn from `rng`.
    pub fn new(policy: RenewalPolicy, rng: StdRng) -> Self {
        let policy = policy.sanitized();
        Self {
            policy,
            current: None,
            backoff: Backoff::new(policy, rng),
        }
    }

    /// A schedule seeded from the operating system's entropy (what production uses).
    pub fn from_entropy(policy: RenewalPolicy) -> Self {
        Self::new(policy, StdRng::from_os_rng())
    }

    /// The validity of the credentials currently served, if any.
    pub fn current(&self) -> Option<Validity> {
        self.current
    }

    /// Consecutive failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// New credentials were obtained at `now`: serve them, renew at half-life ± jitter (or at once
    /// when that moment has already passed, as for a certificate read from an old file).
    pub fn on_success(&mut self, validity: Validity, now: SystemTime) -> Step {
        self.backoff.reset();
        self.current = Some(validity);
        if now > validity.not_after {
            // Obtained something already expired: treat it like a failure so we back off.
            return self.on_failure(now);
        }
        let delay = validity
            .lifetime()
            .mul_f64(self.policy.renew_fraction)
            .mul_f64(1.0 + self.backoff.jitter_sample());
        let at = validity
            .not_before
            .checked_add(delay)
            .unwrap_or(validity.not_after)
            .min(validity.not_after)
            .max(now);
        Step::Renew { at }
    }

    /// An attempt failed at `now`: back off, keep serving the current certificate while it is valid
    /// and never wait past its expiry.
    pub fn on_failure(&mut self, now: SystemTime) -> Step {
        let delay = self.backoff.next_delay();
        let retry_at = now.checked_add(delay).unwrap_or(now);
        match self.current {
            Some(v) if now < v.not_after => Step::Retry {
                at: retry_at.min(v.not_after),
            },
            _ => Step::Expired { retry_at },
        }
    }

    /// What holds at `now` without a new attempt: used when a timer fires for a step computed
    /// earlier, e.g. to notice that the certificate expired while an attempt was in flight.
    pub fn is_serving_at(&self, now: SystemTime) -> bool {
        self.current.is_some_and(|v| v.is_valid_at(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn schedule(seed: u64) -> RenewalSchedule {
        RenewalSchedule::new(RenewalPolicy::default(), StdRng::seed_from_u64(seed))
    }

    fn validity(start: u64, lifetime: Duration) -> Validity {
        Validity {
            not_before: t(start),
            not_after: t(start) + lifetime,
        }
    }

    #[test]
    fn renews_near_half_life() {
        let mut s = schedule(1);
        let step = s.on_success(validity(0, HOUR), t(1));
        let Step::Renew { at } = step else {
            panic!("expected Renew, got {step:?}")
        };
        let offset = at.duration_since(t(0)).unwrap();
        assert!(offset >= Duration::from_secs(1620) && offset <= Duration::from_secs(1980));
    }

    #[test]
    fn same_seed_same_schedule_and_different_seeds_spread() {
        let v = validity(0, HOUR);
        assert_eq!(
            schedule(7).on_success(v, t(0)),
            schedule(7).on_success(v, t(0))
        );
        let distinct: std::collections::HashSet<_> = (0..20)
            .map(|seed| schedule(seed).on_success(v, t(0)).at())
            .collect();
        assert!(
            distinct.len() > 10,
            "jitter should spread renewals: {distinct:?}"
        );
    }

    #[test]
    fn old_certificate_is_renewed_at_once() {
        let mut s = schedule(2);
        let now = t(3000);
        assert_eq!(
            s.on_success(validity(0, HOUR), now),
            Step::Renew { at: now }
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(
            RenewalPolicy {
                jitter: 0.0,
                ..RenewalPolicy::default()
            },
            StdRng::seed_from_u64(3),
        );
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn retry_never_waits_past_expiry_then_reports_expired() {
        let mut s = schedule(4);
        let v = validity(0, Duration::from_secs(100));
        s.on_success(v, t(0));
        // Drive failures until the backoff would overshoot the expiry.
        let mut now = t(50);
        let mut saw_cap = false;
        for _ in 0..20 {
            match s.on_failure(now) {
                Step::Retry { at } => {
                    assert!(at <= v.not_after);
                    saw_cap |= at == v.not_after;
                    now = at;
                }
                Step::Expired { .. } => break,
                Step::Renew { .. } => panic!("a failure never yields Renew"),
            }
        }
        assert!(saw_cap, "a retry should have been clamped to the expiry");
        // At the expiry instant itself the certificate is still valid; one tick later it is not.
        let after = v.not_after + Duration::from_secs(1);
        assert!(matches!(s.on_failure(after), Step::Expired { .. }));
        assert!(!s.is_serving_at(after));
    }

    #[test]
    fn no_credentials_yet_means_expired_with_retry() {
        let mut s = schedule(5);
        let step = s.on_failure(t(0));
        assert!(matches!(step, Step::Expired { retry_at } if retry_at > t(0)));
        assert!(!step.is_serving());
    }

    #[test]
    fn success_after_failures_resets_backoff() {
        let mut s = schedule(6);
        for _ in 0..5 {
            s.on_failure(t(0));
        }
        assert_eq!(s.failures(), 5);
        s.on_success(validity(0, HOUR), t(0));
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn obtaining_an_expired_certificate_counts_as_failure() {
        let mut s = schedule(8);
        let step = s.on_success(validity(0, HOUR), t(7200));
        assert!(matches!(step, Step::Expired { .. }));
    }

    #[test]
    fn nonsensical_policy_is_clamped() {
        let mut b = Backoff::new(
            RenewalPolicy {
                renew_fraction: f64::NAN,
                jitter: 7.0,
                backoff_initial: Duration::ZERO,
                backoff_max: Duration::ZERO,
            },
            StdRng::seed_from_u64(9),
        );
        assert!(b.next_delay() > Duration::ZERO);
    }

    proptest! {
        #[test]
        fn renewal_lies_within_jittered_half_life(
            seed in any::<u64>(),
            start in 0u64..1_000_000,
            lifetime_s in 1u64..(400 * 24 * 3600),
        ) {
            let v = validity(start, Duration::from_secs(lifetime_s));
            let mut s = schedule(seed);
            let at = s.on_success(v, v.not_before).at();
            let offset = at.duration_since(v.not_before).unwrap().as_secs_f64();
            let life = lifetime_s as f64;
            prop_assert!(offset >= life * 0.45 - 1e-6, "offset {offset} life {life}");
            prop_assert!(offset <= life * 0.55 + 1e-6, "offset {offset} life {life}");
            prop_assert!(at <= v.not_after);
        }

        #[test]
        fn backoff_is_bounded_and_grows_until_capped(seed in any::<u64>(), n in 1usize..60) {
            let policy = RenewalPolicy::default();
            let mut b = Backoff::new(policy, StdRng::seed_from_u64(seed));
            for i in 0..n {
                let d = b.next_delay();
                prop_assert!(d <= policy.backoff_max);
                let base = policy.backoff_initial.saturating_mul(1u32 << i.min(31) as u32)
                    .min(policy.backoff_max);
                prop_assert!(d >= base.mul_f64(0.9) - Duration::from_millis(1));
            }
        }

        #[test]
        fn retries_stay_within_validity_while_serving(
            seed in any::<u64>(),
            lifetime_s in 1u64..100_000,
            fail_at_s in 0u64..200_000,
        ) {
            let v = validity(0, Duration::from_secs(lifetime_s));
            let mut s = schedule(seed);
            s.on_success(v, v.not_before);
            let now = t(fail_at_s);
            match s.on_failure(now) {
                Step::Retry { at } => {
                    prop_assert!(now < v.not_after);
                    prop_assert!(at > now && at <= v.not_after);
                }
                Step::Expired { retry_at } => {
                    prop_assert!(now >= v.not_after);
                    prop_assert!(retry_at > now);
                }
                Step::Renew { .. } => prop_assert!(false, "failure yielded Renew"),
            }
        }
    }
}
