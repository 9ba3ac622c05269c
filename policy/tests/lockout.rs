//! Continuous verification with a controlled clock: trip, extend, expire, clear.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use meshguard_policy::lockout::{Caller, Failure, Lockout, LockoutConfig, LockoutEvent};

const ID: &str = "spiffe://bank.example/ns/x/sa/y";

fn at(base: Timestamp, secs: i64) -> Timestamp {
    base.checked_add(SignedDuration::from_secs(secs)).unwrap()
}

fn lockout() -> (Lockout, Timestamp) {
    let config = LockoutConfig {
        threshold: 3,
        window: SignedDuration::from_secs(60),
        block: SignedDuration::from_mins(5),
        max_block: SignedDuration::from_mins(30),
        max_tracked: 100,
    };
    (
        Lockout::new(config),
        "2026-11-23T10:00:00Z".parse().unwrap(),
    )
}

#[test]
fn trips_after_threshold_within_window() {
    let (l, t0) = lockout();
    assert!(l.record(Some(ID), None, Failure::Denied, t0).is_empty());
    assert!(
        l.record(Some(ID), None, Failure::Denied, at(t0, 10))
            .is_empty()
    );
    // Outside the window the first failure no longer counts.
    assert!(
        l.record(Some(ID), None, Failure::Denied, at(t0, 61))
            .is_empty()
    );
    let events = l.record(Some(ID), None, Failure::Denied, at(t0, 62));
    let until = at(t0, 62 + 300);
    assert_eq!(
        events,
        [LockoutEvent::Blocked {
            caller: Caller::Principal(ID.into()),
            until,
            strikes: 1
        }]
    );
    assert!(l.check(Some(ID), None, at(t0, 100)).is_some());
    assert!(
        l.check(Some("spiffe://bank.example/other"), None, at(t0, 100))
            .is_none()
    );
    assert_eq!(l.list(at(t0, 100)).len(), 1);
    assert_eq!(l.stats(at(t0, 100)).refused_total, 1);
}

#[test]
fn blocks_addresses_on_failed_handshakes() {
    let (l, t0) = lockout();
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    for i in 0..3 {
        l.record(None, Some(ip), Failure::HandshakeFailed, at(t0, i));
    }
    let b = l.check(Some(ID), Some(ip), at(t0, 5)).unwrap();
    assert_eq!(b.caller, Caller::Address(ip));
}

#[test]
fn repeat_extends_then_expires_by_itself() {
    let (l, t0) = lockout();
    for i in 0..3 {
        l.record(Some(ID), None, Failure::Denied, at(t0, i));
    }
    // Still failing while blocked: the block is extended to twice the length.
    let mut events = Vec::new();
    for i in 10..13 {
        events.extend(l.record(Some(ID), None, Failure::Denied, at(t0, i)));
    }
    let until = at(t0, 12 + 600);
    assert_eq!(
        events,
        [LockoutEvent::Extended {
            caller: Caller::Principal(ID.into()),
            until,
            strikes: 2
        }]
    );
    assert!(l.check(Some(ID), None, at(t0, 611)).is_some());
    assert!(
        l.check(Some(ID), None, at(t0, 612)).is_none(),
        "expires without a sweep"
    );
    assert_eq!(
        l.expire(at(t0, 700)),
        [LockoutEvent::Expired {
            caller: Caller::Principal(ID.into())
        }]
    );
    // Soon after: a third trip is longer still, capped at max_block (30 min).
    for i in 800..803 {
        l.record(Some(ID), None, Failure::Denied, at(t0, i));
    }
    assert_eq!(l.list(at(t0, 803))[0].until, at(t0, 802 + 1200));
    for round in 0..3 {
        for i in 0..3 {
            l.record(
                Some(ID),
                None,
                Failure::Denied,
                at(t0, 900 + round * 10 + i),
            );
        }
    }
    assert_eq!(l.list(at(t0, 930))[0].until, at(t0, 922 + 1800));
    // Quiet for max_block after the block: forgotten, next trip starts from the first length.
    l.expire(at(t0, 922 + 1800 + 1800 + 1));
    assert!(l.list(at(t0, 10_000)).is_empty());
    for i in 10_000..10_003 {
        l.record(Some(ID), None, Failure::Denied, at(t0, i));
    }
    assert_eq!(l.list(at(t0, 10_003))[0].strikes, 1);
}

#[test]
fn operator_clears() {
    let (l, t0) = lockout();
    for i in 0..3 {
        l.record(Some(ID), None, Failure::Denied, at(t0, i));
    }
    let caller = Caller::Principal(ID.into());
    assert_eq!(
        l.clear(&caller),
        Some(LockoutEvent::Cleared {
            caller: caller.clone()
        })
    );
    assert!(l.check(Some(ID), None, at(t0, 5)).is_none());
    assert_eq!(l.clear(&caller), None);
    assert_eq!(l.stats(at(t0, 5)).blocks_total, 1);
}
