//! Continuous verification in the proxy: the `[lockout]` config, and the glue between the inbound
//! listeners and the policy crate's [`Lockout`] table. Inbound listeners record policy denials of
//! an authenticated peer (of its connections and of its HTTP requests) against its SPIFFE ID only, and failed handshakes against the source
//! address under the separate `[lockout.unauthenticated]` limits (an address is shared by everyone
//! behind a NAT or gateway, so it gets a higher threshold and a shorter block). A caller that trips
//! its threshold is refused (before the handshake by address, right after it by SPIFFE ID) until
//! its block ends. Blocks are
//! exported as metrics, listed and cleared on the admin API, and expire by themselves.
//!
//! Lockout is off unless the config has a `[lockout]` section: a block refuses legitimate traffic
//! too, so the operator opts in and picks the thresholds.

use std::net::IpAddr;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use meshguard_policy::lockout::{Block, Caller, Failure, LockoutEvent};
use meshguard_policy::{Lockout, LockoutConfig, LockoutLimits};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::config::HumanDuration;

/// The `[lockout]` section: N policy denials of one SPIFFE ID within `window` block it for
/// `block`, doubled on each repeat up to `max_block`; `[lockout.unauthenticated]` tunes the same
/// for failed handshakes by source address.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutSettings {
    /// Set `false` to keep the section but switch lockout off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Denials of one SPIFFE ID within `window` that block it.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// The sliding window failures are counted in.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// The first block's length.
    #[serde(default = "default_block")]
    pub block: HumanDuration,
    /// The longest a repeated block grows to.
    #[serde(default = "default_max_block")]
    pub max_block: HumanDuration,
    /// Callers tracked at most, so a flood of distinct sources cannot exhaust memory.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
    /// Failed handshakes by source address: their own limits.
    #[serde(default)]
    pub unauthenticated: UnauthenticatedSettings,
}

/// `[lockout.unauthenticated]`: failed handshakes (nothing verified, so only the source address
/// is known). An address may stand for a whole NAT pool or a gateway, so the defaults are looser
/// than for identities: 50 failures in a minute block the address for a minute, at most 15 minutes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnauthenticatedSettings {
    /// Set `false` to never block an address (e.g. behind a load balancer that hides sources).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed handshakes from one address within `window` that block it.
    #[serde(default = "default_address_threshold")]
    pub threshold: u32,
    /// The sliding window failures are counted in.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// The first block's length.
    #[serde(default = "default_address_block")]
    pub block: HumanDuration,
    /// The longest a repeated block grows to.
    #[serde(default = "default_address_max_block")]
    pub max_block: HumanDuration,
    /// Addresses tracked at most.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

impl Default for UnauthenticatedSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_address_threshold(),
            window: default_window(),
            block: default_address_block(),
            max_block: default_address_max_block(),
            max_tracked: default_max_tracked(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_threshold() -> u32 {
    10
}
fn default_window() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_block() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_max_block() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_max_tracked() -> usize {
    100_000
}
fn default_address_threshold() -> u32 {
    50
}
fn default_address_block() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_address_max_block() -> HumanDuration {
    HumanDuration::from_secs(900)
}

/// The checks both kinds of limits need, with the section named in the sentence.
fn validate_limits(
    section: &str,
    threshold: u32,
    window: HumanDuration,
    block: HumanDuration,
    max_block: HumanDuration,
) -> Result<(), String> {
    if threshold == 0 {
        return Err(format!("[{section}] threshold must be at least 1"));
    }
    if window.get().is_zero() || block.get().is_zero() {
        return Err(format!(
            "[{section}] window and block must be longer than zero"
        ));
    }
    if max_block.get() < block.get() {
        return Err(format!(
            "[{section}] max_block must be at least as long as block"
        ));
    }
    Ok(())
}

fn limits(
    threshold: u32,
    window: HumanDuration,
    block: HumanDuration,
    max_block: HumanDuration,
    max_tracked: usize,
) -> LockoutConfig {
    let signed =
        |d: HumanDuration| SignedDuration::try_from(d.get()).unwrap_or(SignedDuration::MAX);
    LockoutConfig {
        threshold,
        window: signed(window),
        block: signed(block),
        max_block: signed(max_block),
        max_tracked: max_tracked.max(1),
    }
}

impl LockoutSettings {
    /// Checks the values a block needs to make sense.
    pub fn validate(&self) -> Result<(), String> {
        validate_limits(
            "lockout",
            self.threshold,
            self.window,
            self.block,
            self.max_block,
        )?;
        let u = &self.unauthenticated;
        validate_limits(
            "lockout.unauthenticated",
            u.threshold,
            u.window,
            u.block,
            u.max_block,
        )
    }

    fn policy_limits(&self) -> LockoutLimits {
        let u = &self.unauthenticated;
        LockoutLimits {
            principals: limits(
                self.threshold,
                self.window,
                self.block,
                self.max_block,
                self.max_tracked,
            ),
            addresses: u
                .enabled
                .then(|| limits(u.threshold, u.window, u.block, u.max_block, u.max_tracked)),
        }
    }
}

/// The lockout metrics: blocks in force now, blocks started, connections refused.
#[derive(Debug, Clone, Default)]
pub struct LockoutMetrics {
    /// Blocks in force now.
    pub active: Gauge,
    /// Blocks started (not counting extensions).
    pub blocks: Counter,
    /// Connections refused because their caller was blocked.
    pub refused: Counter,
}

impl LockoutMetrics {
    /// Adds the lockout families to the registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lockout_blocks_active",
            "Callers blocked now after repeated denials or failed handshakes",
            self.active.clone(),
        );
        registry.register(
            "lockout_blocks",
            "Blocks started after repeated denials or failed handshakes",
            self.blocks.clone(),
        );
        registry.register(
            "lockout_refused",
            "Connections refused because their caller was blocked",
            self.refused.clone(),
        );
    }
}

/// The clock the guard reads; tests pass their own.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The process's lockout table with its metrics and clock; cheap to clone.
#[derive(Clone)]
pub struct LockoutGuard {
    table: Arc<Lockout>,
    metrics: LockoutMetrics,
    clock: Clock,
}

impl std::fmt::Debug for LockoutGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockoutGuard")
            .field("limits", self.table.limits())
            .finish_non_exhaustive()
    }
}

// === impl LockoutGuard ===

impl LockoutGuard {
    /// A guard for the settings, or `None` when lockout is switched off.
    pub fn new(settings: &LockoutSettings, metrics: LockoutMetrics) -> Option<Self> {
        Self::with_clock(settings, metrics, Arc::new(Timestamp::now))
    }

    /// As [`Self::new`], reading time from `clock`.
    pub fn with_clock(
        settings: &LockoutSettings,
        metrics: LockoutMetrics,
        clock: Clock,
    ) -> Option<Self> {
        settings.enabled.then(|| Self {
            table: Arc::new(Lockout::new(settings.policy_limits())),
            metrics,
            clock,
        })
    }

    /// The block in force for the caller, if any; counted as a refusal.
    pub fn check(&self, principal: Option<&str>, address: Option<IpAddr>) -> Option<Block> {
        let block = self.table.check(principal, address, (self.clock)())?;
        self.metrics.refused.inc();
        Some(block)
    }

    /// Records a policy denial (against the SPIFFE ID) or a failed handshake (against the address).
    pub fn record(&self, failure: Failure<'_>) {
        let events = self.table.record(failure, (self.clock)());
        self.apply(&events);
    }

    /// Blocks in force now.
    pub fn list(&self) -> Vec<Block> {
        self.table.list((self.clock)())
    }

    /// Lifts the caller's block; `false` when the caller had no entry.
    pub fn clear(&self, caller: &Caller) -> bool {
        let event = self.table.clear(caller);
        self.apply(event.as_slice());
        event.is_some()
    }

    /// Ends expired blocks (they stop applying at their end anyway) and logs each.
    pub fn expire(&self) {
        let events = self.table.expire((self.clock)());
        self.apply(&events);
    }

    /// Runs [`Self::expire`] every second until the task is aborted, so the gauge and the log
    /// follow blocks that end on their own.
    pub async fn expire_periodically(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire();
        }
    }

    fn apply(&self, events: &[LockoutEvent]) {
        if events.is_empty() {
            return;
        }
        for event in events {
            match event {
                LockoutEvent::Blocked { .. } => {
                    self.metrics.blocks.inc();
                }
                LockoutEvent::Expired { caller } => {
                    tracing::info!(%caller, "lockout expired");
                }
                LockoutEvent::Extended { .. } | LockoutEvent::Cleared { .. } => {}
            }
        }
        let active = i64::try_from(self.list().len()).unwrap_or(i64::MAX);
        self.metrics.active.set(active);
    }
}

/// The log reason for a refused caller.
pub fn refusal_reason(block: &Block) -> String {
    format!(
        "locked out until {} ({} blocked after repeated {}; strike {})",
        block.until,
        block.caller,
        match block.caller {
            Caller::Principal(_) => "denials",
            Caller::Address(_) => "failed handshakes",
        },
        block.strikes
    )
}

/// Marks a connection refused because its caller is blocked: logged with the reason, denied in
/// the access log.
pub fn refuse(conn: &mut crate::listener::Connection, block: &Block) {
    let reason = refusal_reason(block);
    tracing::warn!(
        listener = %conn.record.listener,
        source = %conn.record.source_addr,
        caller = %block.caller,
        %reason,
        "connection refused: caller locked out"
    );
    conn.record.decision = Some(crate::access_log::Outcome::Deny);
    conn.record.rule = Some("lockout".to_owned());
    conn.record
        .fail(crate::access_log::ErrorClass::Policy, reason);
}

/// A block as the admin API shows it.
pub fn block_json(block: &Block) -> serde_json::Value {
    let (kind, value) = match &block.caller {
        Caller::Principal(p) => ("principal", p.to_string()),
        Caller::Address(a) => ("source_ip", a.to_string()),
    };
    serde_json::json!({
        kind: value,
        "since": block.since.to_string(),
        "until": block.until.to_string(),
        "strikes": block.strikes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn settings(text: &str) -> LockoutSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_section_has_sane_defaults_and_rejects_nonsense() {
        let s = settings("");
        assert!(s.enabled);
        assert_eq!((s.threshold, s.block.get().as_secs()), (10, 300));
        assert!(s.validate().is_ok());
        assert!(settings("threshold = 0").validate().is_err());
        assert!(
            settings("block = \"10m\"\nmax_block = \"1m\"")
                .validate()
                .is_err()
        );
        assert!(toml::from_str::<LockoutSettings>("treshold = 3").is_err());
        assert_eq!(
            s.unauthenticated.threshold, 50,
            "addresses are looser than identities"
        );
        let broken = settings("[unauthenticated]\nthreshold = 0").validate();
        assert!(broken.unwrap_err().contains("[lockout.unauthenticated]"));
        assert!(toml::from_str::<LockoutSettings>("[unauthenticated]\nlimit = 3").is_err());
        assert!(
            LockoutGuard::new(&settings("enabled = false"), LockoutMetrics::default()).is_none()
        );
    }

    #[test]
    fn trip_refuse_expire_and_clear_follow_the_clock_and_the_metrics() {
        let now = Arc::new(Mutex::new(
            "2026-11-23T10:00:00Z".parse::<Timestamp>().unwrap(),
        ));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || *clock_now.lock().unwrap());
        let metrics = LockoutMetrics::default();
        let guard = LockoutGuard::with_clock(
            &settings(
                "threshold = 3\nwindow = \"1m\"\nblock = \"5m\"\n\
                 [unauthenticated]\nthreshold = 4\nblock = \"5m\"",
            ),
            metrics.clone(),
            clock,
        )
        .unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        for _ in 0..3 {
            guard.record(Failure::Unauthenticated { address: ip });
        }
        assert!(
            guard.check(None, Some(ip)).is_none(),
            "below the address threshold"
        );
        guard.record(Failure::Unauthenticated { address: ip });
        let block = guard.check(Some("spiffe://td/x"), Some(ip)).unwrap();
        assert_eq!(block.until.to_string(), "2026-11-23T10:05:00Z");
        assert!(refusal_reason(&block).starts_with("locked out until 2026-11-23T10:05:00Z"));
        assert_eq!(block_json(&block)["source_ip"], "10.0.0.5");
        assert_eq!(
            (
                metrics.active.get(),
                metrics.blocks.get(),
                metrics.refused.get()
            ),
            (1, 1, 1)
        );

        // The block ends by itself at `until`.
        *now.lock().unwrap() = "2026-11-23T10:05:00Z".parse().unwrap();
        assert!(guard.check(None, Some(ip)).is_none());
        guard.expire();
        assert_eq!(metrics.active.get(), 0);

        // A principal trips, and the operator clears it.
        for _ in 0..3 {
            guard.record(Failure::Denied {
                principal: "spiffe://td/x",
            });
        }
        assert_eq!(guard.list().len(), 1);
        assert!(guard.clear(&Caller::Principal("spiffe://td/x".into())));
        assert!(guard.check(Some("spiffe://td/x"), None).is_none());
        assert_eq!((metrics.active.get(), metrics.blocks.get()), (0, 2));
        assert!(!guard.clear(&Caller::Principal("spiffe://td/x".into())));
    }
}
