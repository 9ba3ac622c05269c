//! The driver's timing, with tokio's clock paused: renewal at half-life ±10 %, retries with backoff
//! that never wait past expiry, serving on the current certificate until it expires, and the
//! wait for the first certificate. The source issues real SVIDs from the test CA, dated by the
//! driver's own clock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshguard_identity::Credentials;
use meshguard_identity::source::{
    IdentitySource, IdentityState, IdentityStatus, RunningIdentity, SourceClock, SourceError,
    SourceFuture, StartOptions,
};
use meshguard_identity::test_ca::{SvidSpec, TestCa};
use tokio::sync::watch;

const WORKLOAD: &str = "/ns/payments/sa/payments";

/// Issues a fresh SVID valid from "now" for `lifetime` on each fetch, unless told to fail.
struct IssuingSource {
    ca: Arc<TestCa>,
    clock: SourceClock,
    lifetime: Duration,
    fail: Arc<AtomicBool>,
    /// Fails this many fetches before anything else.
    fail_first: Arc<AtomicU32>,
    fetches: Arc<Mutex<Vec<SystemTime>>>,
}

impl IdentitySource for IssuingSource {
    fn name(&self) -> String {
        "test issuer".to_owned()
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            let now = self.clock.now();
            self.fetches.lock().expect("fetch log").push(now);
            let skip = self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if skip || self.fail.load(Ordering::SeqCst) {
                return Err(SourceError::NotReady {
                    source_name: self.name(),
                    reason: "the test CA is down".to_owned(),
                });
            }
            let spec = SvidSpec::new(WORKLOAD).valid(now, now + self.lifetime);
            let svid = self.ca.issue_with(&spec).to_svid().expect("good SVID");
            Ok(Credentials::new(svid, self.ca.bundle_set()))
        })
    }
}

struct Harness {
    identity: RunningIdentity,
    fail: Arc<AtomicBool>,
    fetches: Arc<Mutex<Vec<SystemTime>>>,
    clock: SourceClock,
}

async fn start(lifetime: Duration, seed: u64, fail_first: u32) -> Harness {
    let clock = SourceClock::new();
    let fail = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(Mutex::new(Vec::new()));
    let source = IssuingSource {
        ca: Arc::new(TestCa::new("bank.example")),
        clock,
        lifetime,
        fail: fail.clone(),
        fail_first: Arc::new(AtomicU32::new(fail_first)),
        fetches: fetches.clone(),
    };
    let options = StartOptions {
        clock,
        rng_seed: Some(seed),
        ..StartOptions::default()
    };
    let identity = source.start(options).await;
    Harness {
        identity,
        fail,
        fetches,
        clock,
    }
}

async fn status_where(
    status: &mut watch::Receiver<IdentityStatus>,
    pred: impl Fn(&IdentityStatus) -> bool,
) -> IdentityStatus {
    status
        .wait_for(|s| pred(s))
        .await
        .expect("the driver is running")
        .clone()
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).expect("b after a").as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_with_jitter() {
    let lifetime = Duration::from_secs(3600);
    let mut renewal_offsets = Vec::new();
    for seed in 0..6 {
        let h = start(lifetime, seed, 0).await;
        let first = h.identity.credentials().current();
        let mut status = h.identity.status();
        let after = status_where(&mut status, |s| s.rotations == 1).await;
        assert_eq!(after.state, IdentityState::Serving);

        let fetches = h.fetches.lock().unwrap().clone();
        assert_eq!(fetches.len(), 2, "one fetch at start, one at renewal");
        // not_before is whole seconds (X.509 time), so allow one second of slack.
        let offset = secs_between(first.svid.not_before(), fetches[1]);
        assert!(
            (0.45 * 3600.0 - 1.0..=0.55 * 3600.0 + 1.0).contains(&offset),
            "seed {seed}: renewed {offset}s after not_before"
        );
        assert_ne!(
            h.identity.credentials().current().svid.leaf(),
            first.svid.leaf()
        );
        renewal_offsets.push(offset.round() as u64);
    }
    renewal_offsets.sort_unstable();
    renewal_offsets.dedup();
    assert!(
        renewal_offsets.len() > 3,
        "jitter spreads renewals: {renewal_offsets:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_back_off_keep_serving_and_stop_at_expiry() {
    let lifetime = Duration::from_secs(600);
    let h = start(lifetime, 42, 0).await;
    let first = h.identity.credentials().current();
    let not_after = first.svid.not_after();
    h.fail.store(true, Ordering::SeqCst);

    let mut status = h.identity.status();
    let retrying = status_where(&mut status, |s| s.state == IdentityState::Retrying).await;
    assert!(
        retrying
            .last_error
            .as_deref()
            .unwrap()
            .contains("the test CA is down")
    );
    assert!(
        h.identity.is_serving(),
        "the current certificate serves while renewal fails"
    );

    let expired = status_where(&mut status, |s| s.state == IdentityState::Expired).await;
    assert!(!h.identity.is_serving());
    assert_eq!(expired.not_after, not_after);
    assert!(h.clock.now() >= not_after);
    assert_eq!(
        h.identity.credentials().current().svid.leaf(),
        first.svid.leaf()
    );

    let fetches = h.fetches.lock().unwrap().clone();
    // fetches[0]: start; fetches[1]: the renewal at ~half-life; then the retries.
    let retries: Vec<SystemTime> = fetches[1..].to_vec();
    // tokio's timers tick in milliseconds, so a wake-up may land up to a tick after its deadline.
    let tick = Duration::from_millis(2);
    assert!(
        retries.iter().all(|t| *t <= not_after + tick),
        "no attempt is scheduled past the expiry: {retries:?}"
    );
    let last = *retries.last().unwrap();
    assert!(
        last >= not_after && last <= not_after + tick,
        "the last retry is clamped to the expiry: {last:?} vs {not_after:?}"
    );
    let gaps: Vec<f64> = retries
        .windows(2)
        .map(|w| secs_between(w[0], w[1]))
        .collect();
    assert!(gaps.len() >= 5, "several retries before expiry: {gaps:?}");
    assert!(
        (0.9..=1.1).contains(&gaps[0]),
        "first retry after ~1 s: {gaps:?}"
    );
    // Each unclamped gap doubles, within the ±10 % jitter of both.
    for pair in gaps[..gaps.len() - 1].windows(2) {
        let ratio = pair[1] / pair[0];
        assert!((1.6..=2.5).contains(&ratio), "backoff doubles: {gaps:?}");
    }

    // The CA comes back: the next retry rotates and the workload serves again.
    h.fail.store(false, Ordering::SeqCst);
    let back = status_where(&mut status, |s| s.state == IdentityState::Serving).await;
    assert_eq!(back.rotations, 1);
    assert_eq!(back.consecutive_failures, 0);
    assert!(h.identity.is_serving());
    assert!(h.identity.expires_at() > not_after);
}

#[tokio::test(start_paused = true)]
async fn start_waits_for_the_first_certificate() {
    let begin = tokio::time::Instant::now();
    let h = start(Duration::from_secs(3600), 7, 3).await;
    let waited = begin.elapsed().as_secs_f64();
    // Three failures: backoff of ~1 + 2 + 4 s (±10 %) before the fourth attempt succeeds.
    assert!((6.3..=7.7).contains(&waited), "waited {waited}s");
    assert_eq!(h.fetches.lock().unwrap().len(), 4);
    let status = h.identity.status().borrow().clone();
    assert_eq!(status.state, IdentityState::Serving);
    assert_eq!(status.consecutive_failures, 0);
}

/// Never answers its first fetch: the driver's fetch timeout must turn that into a retry.
struct HangsOnce {
    inner: IssuingSource,
    hung: bool,
}

impl IdentitySource for HangsOnce {
    fn name(&self) -> String {
        "hangs once".to_owned()
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        if !self.hung {
            self.hung = true;
            return Box::pin(std::future::pending());
        }
        self.inner.fetch()
    }
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_hangs_times_out_and_is_retried() {
    let clock = SourceClock::new();
    let fetches = Arc::new(Mutex::new(Vec::new()));
    let source = HangsOnce {
        inner: IssuingSource {
            ca: Arc::new(TestCa::new("bank.example")),
            clock,
            lifetime: Duration::from_secs(3600),
            fail: Arc::new(AtomicBool::new(false)),
            fail_first: Arc::new(AtomicU32::new(0)),
            fetches: fetches.clone(),
        },
        hung: false,
    };
    let begin = tokio::time::Instant::now();
    let options = StartOptions {
        clock,
        fetch_timeout: Duration::from_secs(5),
        rng_seed: Some(3),
        ..StartOptions::default()
    };
    let identity = source.start(options).await;
    let waited = begin.elapsed().as_secs_f64();
    // 5 s timeout, then ~1 s backoff.
    assert!((5.8..=6.2).contains(&waited), "waited {waited}s");
    assert_eq!(fetches.lock().expect("fetch log").len(), 1);
    assert!(identity.is_serving());
}
