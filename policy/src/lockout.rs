//! Continuous verification: a caller that collects `threshold` failures within `window` is
//! blocked for `block`; tripping again while blocked (or soon after) doubles the block, up to
//! `max_block`. Blocks expire by themselves, can be listed and cleared by the operator, and every
//! change comes back as a [`LockoutEvent`] for the log. Pure logic: the caller passes `now`.
//!
//! Who a failure counts against is decided by what is known about the caller, and the type says
//! it: a denial of an authenticated peer counts against its SPIFFE ID only (never its address: many
//! innocent callers share one behind NAT or a gateway); a failed handshake, where nothing was
//! verified, counts against the source address, under its own, separately tuned limits.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

/// Thresholds and durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Failures within `window` that trip a block.
    pub threshold: u32,
    pub window: SignedDuration,
    /// The first block's length; each further trip doubles it.
    pub block: SignedDuration,
    pub max_block: SignedDuration,
    /// Callers tracked at most (bounded memory under a flood of distinct sources).
    pub max_tracked: usize,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            threshold: 10,
            window: SignedDuration::from_mins(1),
            block: SignedDuration::from_mins(5),
            max_block: SignedDuration::from_hours(1),
            max_tracked: 100_000,
        }
    }
}

/// Who is being counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    Principal(Box<str>),
    Address(IpAddr),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Principal(p) => f.write_str(p),
            Self::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// What failed, and so who it counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// Policy denied an authenticated peer: counts against its SPIFFE ID, never its address.
    Denied { principal: &'a str },
    /// A handshake failed (or a peer had no verified identity): counts against the source address,
    /// under the address limits.
    Unauthenticated { address: IpAddr },
}

/// The limits for each kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockoutLimits {
    /// Authenticated callers, by SPIFFE ID.
    pub principals: LockoutConfig,
    /// Unauthenticated failures, by source address; `None` never blocks an address.
    pub addresses: Option<LockoutConfig>,
}

/// A change in block state, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockoutEvent {
    Blocked {
        caller: Caller,
        until: Timestamp,
        strikes: u32,
    },
    Extended {
        caller: Caller,
        until: Timestamp,
        strikes: u32,
    },
    Expired {
        caller: Caller,
    },
    Cleared {
        caller: Caller,
    },
}

/// A block in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub caller: Caller,
    pub since: Timestamp,
    pub until: Timestamp,
    pub strikes: u32,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockoutStats {
    pub blocks_total: u64,
    pub extensions_total: u64,
    /// Requests and connections refused because their caller was blocked.
    pub refused_total: u64,
    pub active_blocks: u64,
}

/// Callers by kind, so a lookup by `&str` needs no allocation.
#[derive(Debug, Default)]
struct State {
    principals: HashMap<Box<str>, Entry>,
    addresses: HashMap<IpAddr, Entry>,
}

impl State {
    fn len(&self) -> usize {
        self.principals.len() + self.addresses.len()
    }

    fn get(
        &self,
        principal: Option<&str>,
        address: Option<IpAddr>,
    ) -> [Option<(Caller, &Entry)>; 2] {
        [
            principal.and_then(|p| {
                self.principals
                    .get(p)
                    .map(|e| (Caller::Principal(p.into()), e))
            }),
            address.and_then(|a| self.addresses.get(&a).map(|e| (Caller::Address(a), e))),
        ]
    }
}

#[derive(Debug, Default)]
struct Entry {
    failures: VecDeque<Timestamp>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    strikes: u32,
    last_seen: Option<Timestamp>,
}

/// The lockout state; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Lockout {
    limits: LockoutLimits,
    callers: Mutex<State>,
    blocks_total: AtomicU64,
    extensions_total: AtomicU64,
    refused_total: AtomicU64,
}

impl Lockout {
    pub fn new(limits: LockoutLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> &LockoutLimits {
        &self.limits
    }

    /// Records a failure against the one caller it names and returns any block it caused.
    pub fn record(&self, failure: Failure<'_>, now: Timestamp) -> Vec<LockoutEvent> {
        let mut events = Vec::new();
        let Ok(mut callers) = self.callers.lock() else {
            return events;
        };
        let State {
            principals,
            addresses,
        } = &mut *callers;
        let counted = match failure {
            Failure::Denied { principal } => {
                let config = &self.limits.principals;
                if principals.len() >= config.max_tracked {
                    self.sweep_kind(
                        principals,
                        config,
                        |p| Caller::Principal(p.clone()),
                        now,
                        &mut events,
                    );
                }
                tracked(
                    principals,
                    principal,
                    || principal.into(),
                    config.max_tracked,
                )
                .map(|entry| self.count(Caller::Principal(principal.into()), entry, config, now))
            }
            Failure::Unauthenticated { address } => {
                let Some(config) = &self.limits.addresses else {
                    return events;
                };
                if addresses.len() >= config.max_tracked {
                    self.sweep_kind(addresses, config, |a| Caller::Address(*a), now, &mut events);
                }
                tracked(addresses, &address, || address, config.max_tracked)
                    .map(|entry| self.count(Caller::Address(address), entry, config, now))
            }
        };
        match counted {
            Some(event) => events.extend(event),
            None => tracing::warn!("lockout table full; failures of new callers are not tracked"),
        }
        events
    }

    fn count(
        &self,
        caller: Caller,
        entry: &mut Entry,
        config: &LockoutConfig,
        now: Timestamp,
    ) -> Option<LockoutEvent> {
        let window_start = now.checked_sub(config.window).unwrap_or(Timestamp::MIN);
        entry.failures.push_back(now);
        while entry.failures.front().is_some_and(|t| *t <= window_start) {
            entry.failures.pop_front();
        }
        entry.last_seen = Some(now);
        if entry.failures.len() < config.threshold as usize {
            return None;
        }
        entry.failures.clear();
        entry.strikes += 1;
        let blocked = entry.until.is_some_and(|u| u > now);
        let until = now
            .checked_add(duration(config, entry.strikes))
            .unwrap_or(Timestamp::MAX);
        entry.until = Some(entry.until.map_or(until, |u| u.max(until)));
        let until = entry.until.unwrap_or(until);
        if blocked {
            self.extensions_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%caller, %until, strikes = entry.strikes, "lockout extended");
            Some(LockoutEvent::Extended {
                caller,
                until,
                strikes: entry.strikes,
            })
        } else {
            entry.since = Some(now);
            self.blocks_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%caller, %until, strikes = entry.strikes, "caller blocked after repeated failures");
            Some(LockoutEvent::Blocked {
                caller,
                until,
                strikes: entry.strikes,
            })
        }
    }

    /// The block in force for the principal or the address, if any (counted as a refusal).
    pub fn check(
        &self,
        principal: Option<&str>,
        address: Option<IpAddr>,
        now: Timestamp,
    ) -> Option<Block> {
        let callers = self.callers.lock().ok()?;
        if callers.len() == 0 {
            return None;
        }
        let blocked = |e: &Entry| e.until.is_some_and(|u| u > now);
        let hit = principal
            .and_then(|p| callers.principals.get(p))
            .is_some_and(blocked)
            || address
                .and_then(|a| callers.addresses.get(&a))
                .is_some_and(blocked);
        if !hit {
            return None;
        }
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        callers
            .get(principal, address)
            .into_iter()
            .flatten()
            .find_map(|(c, e)| block_of(&c, e, now))
    }

    /// Blocks in force at `now`, sorted by caller.
    pub fn list(&self, now: Timestamp) -> Vec<Block> {
        let Ok(callers) = self.callers.lock() else {
            return Vec::new();
        };
        let principals = callers
            .principals
            .iter()
            .map(|(p, e)| (Caller::Principal(p.clone()), e));
        let addresses = callers
            .addresses
            .iter()
            .map(|(a, e)| (Caller::Address(*a), e));
        let mut blocks: Vec<Block> = principals
            .chain(addresses)
            .filter_map(|(c, e)| block_of(&c, e, now))
            .collect();
        blocks.sort_by(|a, b| a.caller.cmp(&b.caller));
        blocks
    }

    /// Lifts a block and forgets the caller's history (the operator's decision).
    pub fn clear(&self, caller: &Caller) -> Option<LockoutEvent> {
        let mut callers = self.callers.lock().ok()?;
        let removed = match caller {
            Caller::Principal(p) => callers.principals.remove(p),
            Caller::Address(a) => callers.addresses.remove(a),
        };
        removed.map(|_| {
            tracing::info!(%caller, "lockout cleared by operator");
            LockoutEvent::Cleared {
                caller: caller.clone(),
            }
        })
    }

    /// Ends expired blocks and forgets quiet callers; call it periodically. Blocks stop applying at
    /// `until` whether or not this runs.
    pub fn expire(&self, now: Timestamp) -> Vec<LockoutEvent> {
        let mut events = Vec::new();
        if let Ok(mut callers) = self.callers.lock() {
            self.sweep(&mut callers, now, &mut events);
        }
        events
    }

    fn sweep(&self, callers: &mut State, now: Timestamp, events: &mut Vec<LockoutEvent>) {
        let principals = &self.limits.principals;
        self.sweep_kind(
            &mut callers.principals,
            principals,
            |p| Caller::Principal(p.clone()),
            now,
            events,
        );
        if let Some(addresses) = &self.limits.addresses {
            self.sweep_kind(
                &mut callers.addresses,
                addresses,
                |a| Caller::Address(*a),
                now,
                events,
            );
        }
    }

    fn sweep_kind<K: Clone + Eq + std::hash::Hash>(
        &self,
        entries: &mut HashMap<K, Entry>,
        config: &LockoutConfig,
        caller: impl Fn(&K) -> Caller,
        now: Timestamp,
        events: &mut Vec<LockoutEvent>,
    ) {
        // Strikes are remembered for `max_block` after the last failure, so a caller that comes
        // back soon after a block gets a longer one.
        let forget_before = now.checked_sub(config.max_block).unwrap_or(Timestamp::MIN);
        entries.retain(|key, entry| {
            if entry.until.is_some_and(|u| u <= now) {
                entry.until = None;
                entry.since = None;
                events.push(LockoutEvent::Expired {
                    caller: caller(key),
                });
            }
            entry.until.is_some() || entry.last_seen.is_some_and(|t| t > forget_before)
        });
    }

    pub fn stats(&self, now: Timestamp) -> LockoutStats {
        LockoutStats {
            blocks_total: self.blocks_total.load(Ordering::Relaxed),
            extensions_total: self.extensions_total.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
            active_blocks: self.list(now).len() as u64,
        }
    }
}

/// The caller's entry, created unless the table already holds `max` callers (then `None`: a flood
/// of distinct callers cannot exhaust memory).
fn tracked<'m, K, Q>(
    entries: &'m mut HashMap<K, Entry>,
    key: &Q,
    owned: impl FnOnce() -> K,
    max: usize,
) -> Option<&'m mut Entry>
where
    K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
    Q: Eq + std::hash::Hash + ?Sized,
{
    if !entries.contains_key(key) {
        if entries.len() >= max {
            return None;
        }
        entries.insert(owned(), Entry::default());
    }
    entries.get_mut(key)
}

/// `block * 2^(strikes-1)`, at most `max_block`.
fn duration(config: &LockoutConfig, strikes: u32) -> SignedDuration {
    let factor = 1i32
        .checked_shl(strikes.saturating_sub(1).min(30))
        .unwrap_or(i32::MAX);
    config
        .block
        .checked_mul(factor)
        .unwrap_or(config.max_block)
        .min(config.max_block)
}

fn block_of(caller: &Caller, entry: &Entry, now: Timestamp) -> Option<Block> {
    let until = entry.until.filter(|u| *u > now)?;
    Some(Block {
        caller: caller.clone(),
        since: entry.since.unwrap_or(now),
        until,
        strikes: entry.strikes,
    })
}
