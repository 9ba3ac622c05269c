//! Endpoint names to addresses. An IP endpoint is itself; a DNS name stands for every A/AAAA
//! address it resolves to (the system resolver, so `/etc/hosts` and search domains apply), and
//! is resolved again every `dns_refresh`. A failed lookup keeps the name's last addresses, as
//! Envoy's STRICT_DNS clusters do: a resolver hiccup must not empty a healthy upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::Target;

/// A lookup's bound: a stuck resolver must not hold start-up or a refresh forever.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Each target with its addresses, or `None` when its lookup failed.
pub(super) type Resolved = Vec<(Target, Option<Vec<SocketAddr>>)>;

/// Resolves every target once.
pub(super) async fn resolve_all(targets: &[Target]) -> Resolved {
    let mut resolved = Vec::with_capacity(targets.len());
    for target in targets {
        resolved.push((target.clone(), resolve(target).await));
    }
    resolved
}

async fn resolve(target: &Target) -> Option<Vec<SocketAddr>> {
    if let Some(ip) = target.ip() {
        return Some(vec![SocketAddr::new(ip, target.port())]);
    }
    let lookup = tokio::net::lookup_host((target.host(), target.port()));
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            Some(addrs)
        }
        Ok(Err(error)) => {
            tracing::warn!(endpoint = %target, %error, "cannot resolve an upstream endpoint; keeping its last addresses");
            None
        }
        Err(_) => {
            tracing::warn!(endpoint = %target, "resolving an upstream endpoint timed out; keeping its last addresses");
            None
        }
    }
}

/// Resolves `targets` every `every` and hands the result to `apply`, until the owner is dropped.
pub(super) fn spawn_refresh<T, F>(owner: Weak<T>, targets: Vec<Target>, every: Duration, apply: F)
where
    T: Send + Sync + 'static,
    F: Fn(&Arc<T>, Resolved) + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if owner.strong_count() == 0 {
                return;
            }
            let resolved = resolve_all(&targets).await;
            let Some(owner) = owner.upgrade() else {
                return;
            };
            apply(&owner, resolved);
        }
    });
}
