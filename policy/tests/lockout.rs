//! Continuous verification with a controlled clock: trip, extend, expire, clear.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use meshguard_policy::lockout::{
    Caller, Failure, Lockout, LockoutConfig, LockoutEvent, LockoutLimits,
};

const ID: &str = "spiffe://bank.example/ns/x/sa/y";
const DENIED: Failure<'static> = Failure::Denied { principal: ID };

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
    let addresses = LockoutConfig {
        threshold: 5,
        block: SignedDuration::from_mins(1),
        ..config
    };
    (
        Lockout::new(LockoutLimits {
            principals: config,
            addresses: Some(addresses),
        }),
        "2026-11-23T10:00:00Z".parse().unwrap(),
    )
}

#[test]
fn trips_after_threshold_within_window() {
    let (l, t0) = lockout();
    assert!(l.record(DENIED, t0).is_empty());
    assert!(l.record(DENIED, at(t0, 10)).is_empty());
    // Outside the window the first failure no longer counts.
    assert!(l.record(DENIED, at(t0, 61)).is_empty());
    let events = l.record(DENIED, at(t0, 62));
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
    // Addresses have their own limits: 5 failed handshakes, a 1-minute block.
    for i in 0..4 {
        assert!(
            l.record(Failure::Unauthenticated { address: ip }, at(t0, i))
                .is_empty()
        );
    }
    let events = l.record(Failure::Unauthenticated { address: ip }, at(t0, 4));
    assert_eq!(
        events,
        [LockoutEvent::Blocked {
            caller: Caller::Address(ip),
            until: at(t0, 4 + 60),
            strikes: 1
        }]
    );
    let b = l.check(Some(ID), Some(ip), at(t0, 5)).unwrap();
    assert_eq!(b.caller, Caller::Address(ip));
    assert!(
        l.check(Some(ID), None, at(t0, 5)).is_none(),
        "the identity was not blamed"
    );
}

#[test]
fn denials_of_one_identity_never_block_its_address_or_its_neighbours() {
    // Two workloads behind one NAT address: the one that keeps being denied is blocked by its
    // SPIFFE ID; the address, and so the other workload, is untouched.
    let (l, t0) = lockout();
    let nat: IpAddr = "198.51.100.1".parse().unwrap();
    let other = "spiffe://bank.example/ns/x/sa/innocent";
    for i in 0..20 {
        l.record(DENIED, at(t0, i));
    }
    assert!(l.check(Some(ID), Some(nat), at(t0, 21)).is_some());
    assert!(
        l.check(None, Some(nat), at(t0, 21)).is_none(),
        "the address is not blocked"
    );
    assert!(l.check(Some(other), Some(nat), at(t0, 21)).is_none());
    assert_eq!(l.list(at(t0, 21)).len(), 1);
}

#[test]
fn address_lockout_can_be_switched_off_on_its_own() {
    let l = Lockout::new(LockoutLimits {
        principals: LockoutConfig::default(),
        addresses: None,
    });
    let t0: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    for i in 0..1000 {
        assert!(
            l.record(Failure::Unauthenticated { address: ip }, at(t0, i / 100))
                .is_empty()
        );
    }
    assert!(l.check(None, Some(ip), at(t0, 11)).is_none());
}

#[test]
fn repeat_extends_then_expires_by_itself() {
    let (l, t0) = lockout();
    for i in 0..3 {
        l.record(DENIED, at(t0, i));
    }
    // Still failing while blocked: the block is extended to twice the length.
    let mut events = Vec::new();
    for i in 10..13 {
        events.extend(l.record(DENIED, at(t0, i)));
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
        l.record(DENIED, at(t0, i));
    }
    assert_eq!(l.list(at(t0, 803))[0].until, at(t0, 802 + 1200));
    for round in 0..3 {
        for i in 0..3 {
            l.record(DENIED, at(t0, 900 + round * 10 + i));
        }
    }
    assert_eq!(l.list(at(t0, 930))[0].until, at(t0, 922 + 1800));
    // Quiet for max_block after the block: forgotten, next trip starts from the first length.
    l.expire(at(t0, 922 + 1800 + 1800 + 1));
    assert!(l.list(at(t0, 10_000)).is_empty());
    for i in 10_000..10_003 {
        l.record(DENIED, at(t0, i));
    }
    assert_eq!(l.list(at(t0, 10_003))[0].strikes, 1);
}

#[test]
fn operator_clears() {
    let (l, t0) = lockout();
    for i in 0..3 {
        l.record(DENIED, at(t0, i));
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
