//! The one loop that runs every identity source: first credentials, validation of each update,
//! renewal on schedule, backoff on failure, expiry, and the status published for metrics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::credentials::{Credentials, RotatingCredentials};
use crate::spiffe_id::SpiffeId;
use crate::svid::unix_time;

use super::IdentitySource;
use super::clock::SourceClock;
use super::error::SourceError;
use super::renewal::{RenewalPolicy, RenewalSchedule, Step, Validity};

/// How the driver runs a source.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub policy: RenewalPolicy,
    /// The time source; [`SourceClock::new`] in production, anchored fixed dates in tests.
    pub clock: SourceClock,
    /// How long one `fetch` may take before it counts as failed.
    pub fetch_timeout: Duration,
    /// Seed for the jitter; `None` draws one from the OS (production).
    pub rng_seed: Option<u64>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            policy: RenewalPolicy::default(),
            clock: SourceClock::new(),
            fetch_timeout: Duration::from_secs(30),
            rng_seed: None,
        }
    }
}

/// Whether the workload may serve with its current certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityState {
    /// The certificate is valid and the next renewal is scheduled.
    Serving,
    /// The last renewal failed; the certificate is still valid and serves until it expires.
    Retrying,
    /// The certificate expired and nothing replaced it: serve no traffic.
    Expired,
}

/// What metrics and health checks need to know about a workload's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityStatus {
    pub spiffe_id: SpiffeId,
    pub not_before: SystemTime,
    /// When the current certificate expires (the `identity_cert_expiry_seconds` gauge).
    pub not_after: SystemTime,
    pub state: IdentityState,
    /// When the driver next renews or retries.
    pub next_attempt: SystemTime,
    pub consecutive_failures: u32,
    /// The last failure, as a sentence; cleared by the next success.
    pub last_error: Option<String>,
    /// Rotations since start (the first credentials are not counted).
    pub rotations: u64,
}

/// A started source: the credentials TLS reads, the status metrics read, and the task that keeps
/// both fresh (stopped when this is dropped).
#[derive(Debug)]
pub struct RunningIdentity {
    credentials: RotatingCredentials,
    status: watch::Receiver<IdentityStatus>,
    clock: SourceClock,
    task: JoinHandle<()>,
}

impl RunningIdentity {
    /// The credentials to hand to the TLS profile (its resolvers and verifiers).
    pub fn credentials(&self) -> &RotatingCredentials {
        &self.credentials
    }

    /// A receiver of every status change (expiry, state, failures).
    pub fn status(&self) -> watch::Receiver<IdentityStatus> {
        self.status.clone()
    }

    /// When the certificate currently served expires.
    pub fn expires_at(&self) -> SystemTime {
        self.status.borrow().not_after
    }

    /// Whether the certificate may still be served: false once it expired without replacement.
    /// Checks the expiry itself too, so the answer is right even between two driver steps.
    pub fn is_serving(&self) -> bool {
        let status = self.status.borrow();
        status.state != IdentityState::Expired && self.clock.now() <= status.not_after
    }
}

impl Drop for RunningIdentity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === the driver ===

/// Why the driver woke up: a scheduled renewal/retry, or news from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Timer,
    Changed,
}

struct Driver<S> {
    source: S,
    name: String,
    options: StartOptions,
    schedule: RenewalSchedule,
    step: Step,
    /// The last failure logged at warn level, so a file that stays broken is not logged every poll.
    last_warned: Option<String>,
}

pub(super) async fn start<S: IdentitySource>(source: S, options: StartOptions) -> RunningIdentity {
    let rng = match options.rng_seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    let name = source.name();
    let schedule = RenewalSchedule::new(options.policy, rng);
    let mut driver = Driver {
        source,
        name,
        step: Step::Expired {
            retry_at: options.clock.now(),
        },
        options,
        schedule,
        last_warned: None,
    };
    let credentials = driver.first_credentials().await;
    let status = driver.status_for(&credentials.current(), 0, None);
    let (status_tx, status_rx) = watch::channel(status);
    tracing::info!(
        source = %driver.name,
        spiffe_id = %credentials.current().svid.spiffe_id(),
        not_after = ?credentials.expires_at(),
        renew_at = ?driver.step.at(),
        "identity ready"
    );
    let clock = driver.options.clock;
    let task = tokio::spawn(driver.run(credentials.clone(), status_tx));
    RunningIdentity {
        credentials,
        status: status_rx,
        clock,
        task,
    }
}

impl<S: IdentitySource> Driver<S> {
    /// Loops until the source delivers valid credentials; a workload has nothing to serve before.
    async fn first_credentials(&mut self) -> RotatingCredentials {
        loop {
            let outcome = match self.attempt().await {
                Ok((credentials, validity)) => {
                    let now = self.options.clock.now();
                    RotatingCredentials::new_at(credentials, unix_time(now))
                        .map(|rotating| (rotating, validity, now))
                        .map_err(|source| SourceError::Invalid {
                            source_name: self.name.clone(),
                            source: Box::new(source),
                        })
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok((rotating, validity, now)) => {
                    self.step = self.schedule.on_success(validity, now);
                    self.last_warned = None;
                    return rotating;
                }
                Err(e) => {
                    self.step = self.schedule.on_failure(self.options.clock.now());
                    tracing::warn!(
                        source = %self.name,
                        error = %error_chain(&e),
                        retry_at = ?self.step.at(),
                        "no credentials yet; serving no traffic until the source delivers a valid SVID"
                    );
                    self.wait().await;
                }
            }
        }
    }

    async fn run(
        mut self,
        credentials: RotatingCredentials,
        status: watch::Sender<IdentityStatus>,
    ) {
        let mut rotations = 0u64;
        loop {
            let wake = self.wait().await;
            let current = credentials.current();
            let last_error = match self.attempt().await {
                Ok((new, validity)) if same_credentials(&new, &current) => {
                    if wake == Wake::Changed {
                        // The source is back to what we serve (a broken file was restored).
                        self.last_warned = None;
                        None
                    } else {
                        // Renewal time came but the source still holds the same certificate (a file
                        // nobody rewrote, an agent that has not rotated): poll again with backoff.
                        self.step = self.schedule.on_failure(self.options.clock.now());
                        let message = format!(
                            "the source still holds the certificate that expires at {}",
                            crate::error::show_time(unix_time(validity.not_after))
                        );
                        tracing::info!(source = %self.name, next_attempt = ?self.step.at(), "{message}");
                        Some(message)
                    }
                }
                Ok((new, validity)) => {
                    let now = self.options.clock.now();
                    match credentials.rotate_at(new, unix_time(now)) {
                        Ok(()) => {
                            self.step = self.schedule.on_success(validity, now);
                            rotations += 1;
                            self.last_warned = None;
                            None
                        }
                        Err(e) => {
                            let e = SourceError::Invalid {
                                source_name: self.name.clone(),
                                source: Box::new(e),
                            };
                            Some(self.failed(wake, &e))
                        }
                    }
                }
                Err(e) => Some(self.failed(wake, &e)),
            };
            let current = credentials.current();
            let next = self.status_for(&current, rotations, last_error);
            if next.state == IdentityState::Expired
                && status.borrow().state != IdentityState::Expired
            {
                tracing::error!(
                    source = %self.name,
                    spiffe_id = %next.spiffe_id,
                    not_after = ?next.not_after,
                    "the certificate expired and no new one could be obtained; serve no traffic until one arrives"
                );
            }
            status.send_replace(next);
        }
    }

    /// Records a failed attempt: logs it (once per distinct reason at warn) and, when it was a
    /// scheduled attempt, backs off. A failure after a change notice (say a half-written file)
    /// leaves the schedule as it was. Returns the message for the status.
    fn failed(&mut self, wake: Wake, error: &SourceError) -> String {
        let message = error_chain(error);
        if wake == Wake::Timer {
            self.step = self.schedule.on_failure(self.options.clock.now());
        }
        if self.last_warned.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                source = %self.name,
                error = %message,
                next_attempt = ?self.step.at(),
                "keeping the current credentials"
            );
            self.last_warned = Some(message.clone());
        } else {
            tracing::debug!(source = %self.name, error = %message, "still failing");
        }
        message
    }

    /// Sleeps until the next scheduled step, or until the source reports a change.
    async fn wait(&mut self) -> Wake {
        let at = self.step.at();
        let clock = self.options.clock;
        tokio::select! {
            () = clock.sleep_until(at) => Wake::Timer,
            () = self.source.changed() => Wake::Changed,
        }
    }

    /// One fetch, bounded in time and validated: the SVID must verify against the bundle of its
    /// own trust domain now (which also covers expiry), and its key match its leaf.
    async fn attempt(&mut self) -> Result<(Credentials, Validity), SourceError> {
        let timeout = self.options.fetch_timeout;
        let credentials = tokio::time::timeout(timeout, self.source.fetch())
            .await
            .map_err(|_| SourceError::Timeout {
                source_name: self.name.clone(),
                after: timeout,
            })??;
        credentials
            .check(unix_time(self.options.clock.now()))
            .map_err(|source| SourceError::Invalid {
                source_name: self.name.clone(),
                source: Box::new(source),
            })?;
        let validity = Validity {
            not_before: credentials.svid.not_before(),
            not_after: credentials.svid.not_after(),
        };
        Ok((credentials, validity))
    }

    fn status_for(
        &self,
        credentials: &Credentials,
        rotations: u64,
        last_error: Option<String>,
    ) -> IdentityStatus {
        let now = self.options.clock.now();
        let state = match self.step {
            _ if !self.schedule.is_serving_at(now) => IdentityState::Expired,
            Step::Renew { .. } => IdentityState::Serving,
            Step::Retry { .. } => IdentityState::Retrying,
            Step::Expired { .. } => IdentityState::Expired,
        };
        IdentityStatus {
            spiffe_id: credentials.svid.spiffe_id().clone(),
            not_before: credentials.svid.not_before(),
            not_after: credentials.svid.not_after(),
            state,
            next_attempt: self.step.at(),
            consecutive_failures: self.schedule.failures(),
            last_error,
            rotations,
        }
    }
}

/// Same certificate and same bundles: nothing to rotate.
fn same_credentials(new: &Credentials, current: &Arc<Credentials>) -> bool {
    new.svid.chain() == current.svid.chain() && new.bundles == current.bundles
}

/// The error and its sources as one line, so the log names the root cause (the file, the parser).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
