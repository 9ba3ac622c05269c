//! One phase of the soak's mixed load, everything at once for a fixed time: good HTTP/1.1 requests
//! through the sidecar pair (kept-alive, open loop), good new mTLS connections straight to the
//! inbound sidecar (one request each), bad clients round-robin over the catalogue, credential
//! rotations of both sidecars and policy edits (every third one broken), while both sidecars'
//! file descriptors and memory are sampled for their peaks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::attacker;
use super::bad_clients::{Arsenal, BadClient};
use super::pair::Pair;
use super::resources::Held;
use crate::connect::Connector;
use crate::engine::{self, LoadSpec};
use crate::handshake::{FirstRequest, HandshakeExchange};
use crate::http::{HttpExchange, HttpTarget, HttpVersion};
use crate::pacer::PacerClock;
use crate::rate::Rate;
use crate::recorder::Recorder;
use crate::tls::TlsFiles;

/// How fast and how often: the knobs of a phase.
#[derive(Debug, Clone, Copy)]
pub struct MixSettings {
    pub duration: Duration,
    pub rate: f64,
    pub connections: u16,
    pub handshake_rate: f64,
    pub bad_rate: f64,
    pub rotate_every: Duration,
    pub reload_every: Duration,
}

/// What one phase did and saw.
#[derive(Debug, Default)]
pub struct MixOutcome {
    pub keepalive: Recorder,
    pub keepalive_completed: u64,
    pub handshakes: Recorder,
    pub handshakes_completed: u64,
    /// Per bad-client kind, the count of each outcome (`refused`, `403`, ...).
    pub bad: BTreeMap<BadClient, BTreeMap<String, u64>>,
    /// Bad clients that got what they must not get, with what they got.
    pub breaches: Vec<String>,
    pub rotations: u64,
    /// Rotations after which the inbound sidecar served the new certificate within 10 s.
    pub rotations_seen: u64,
    pub policy_edits: u64,
    pub broken_edits: u64,
    /// Peak of each sidecar (`sidecar-in`, `sidecar-out`) during the phase.
    pub peaks: [Held; 2],
}

/// Runs the phase; `edits` numbers policy revisions across phases.
pub async fn run(
    pair: &Pair,
    arsenal: Arc<Arsenal>,
    settings: MixSettings,
    edits: &mut u64,
) -> anyhow::Result<MixOutcome> {
    let spec = |rate: f64| LoadSpec {
        rate: Rate::PerSecond(rate),
        duration: settings.duration,
        timeout: Duration::from_secs(10),
        pacer: PacerClock::Precise,
    };
    // Good traffic 1: the app's requests through the pair, on kept-alive connections.
    let url = format!("http://{}/", pair.outbound);
    let target = Arc::new(HttpTarget::new(&url, HttpVersion::Http1, &TlsFiles::default()).await?);
    let mut exchanges = Vec::new();
    for _ in 0..settings.connections {
        let mut exchange = HttpExchange::new(Arc::clone(&target));
        exchange
            .warm_up()
            .await
            .map_err(|kind| anyhow::anyhow!("the outbound sidecar at {url} refused: {kind}"))?;
        exchanges.push(exchange);
    }
    let keepalive = tokio::spawn(engine::run(spec(settings.rate), exchanges));

    // Good traffic 2: a new mTLS handshake per request, verified against the rotating server SVID.
    let files = TlsFiles {
        cert: Some(pair.client.chain.clone()),
        key: Some(pair.client.key.clone()),
        bundle: Some(pair.client.bundle.clone()),
        expect_id: Some(pair.inbound_svid.spiffe_id.clone()),
    };
    let connector = Connector::new(
        "127.0.0.1",
        pair.inbound.port(),
        Some(files.client_config(&[b"http/1.1"], false)?),
    )
    .await?;
    let url = format!("https://{}/", pair.inbound);
    let first = FirstRequest::Http(Arc::new(HttpTarget::with_connector(
        &url,
        HttpVersion::Http1,
        connector,
    )?));
    let handshakers = (0..4)
        .map(|_| HandshakeExchange::new(first.clone()))
        .collect();
    let handshakes = tokio::spawn(engine::run(spec(settings.handshake_rate), handshakers));

    let mut outcome = MixOutcome::default();
    chaos(pair, &arsenal, settings, edits, &mut outcome).await?;

    let keepalive = keepalive
        .await
        .context("the keep-alive load task failed")??;
    outcome.keepalive_completed = keepalive.completed;
    outcome.keepalive = keepalive.recorder;
    let handshakes = handshakes
        .await
        .context("the handshake load task failed")??;
    outcome.handshakes_completed = handshakes.completed;
    outcome.handshakes = handshakes.recorder;
    Ok(outcome)
}

/// Bad clients, rotations, edits and samples until the phase ends; then waits for the bad clients.
async fn chaos(
    pair: &Pair,
    arsenal: &Arc<Arsenal>,
    settings: MixSettings,
    edits: &mut u64,
    outcome: &mut MixOutcome,
) -> anyhow::Result<()> {
    let end = Instant::now() + settings.duration;
    let pids: Vec<u32> = pair.sidecars.iter().map(|c| c.pid()).collect();
    let mut bad_tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.bad_rate));
    let mut rotate_tick = tokio::time::interval(settings.rotate_every);
    let mut reload_tick = tokio::time::interval(settings.reload_every);
    let mut sample_tick = tokio::time::interval(Duration::from_secs(1));
    for tick in [
        &mut bad_tick,
        &mut rotate_tick,
        &mut reload_tick,
        &mut sample_tick,
    ] {
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    // The first tick of an interval is immediate: let traffic start before the first change.
    rotate_tick.tick().await;
    reload_tick.tick().await;
    let prober = attacker::client_config(Some((
        &std::fs::read_to_string(&pair.prober.chain)?,
        &std::fs::read_to_string(&pair.prober.key)?,
    )))?;
    let mut attempts = JoinSet::new();
    let mut probes = JoinSet::new();
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = bad_tick.tick() => {
                let kind = BadClient::ALL[(sent % BadClient::ALL.len() as u64) as usize];
                // Source addresses 127.0.0.2 to 127.0.0.251, so lockout by address spreads out.
                let host = 2 + (sent / BadClient::ALL.len() as u64 % 250) as u8;
                sent += 1;
                let arsenal = Arc::clone(arsenal);
                attempts.spawn(async move { (kind, arsenal.attempt(kind, host).await) });
            }
            _ = rotate_tick.tick() => {
                let served = pair.rotate(&pair.inbound_svid)?;
                pair.rotate(&pair.outbound_svid)?;
                outcome.rotations += 1;
                // Probed in its own task: up to 10 s of polling must not hold back the bad
                // clients, edits and samples this loop paces.
                probes.spawn(serves_within(
                    pair.inbound,
                    Arc::clone(&prober),
                    served.leaf_der,
                    Duration::from_secs(10),
                ));
            }
            _ = reload_tick.tick() => {
                *edits += 1;
                let broken = edits.is_multiple_of(3);
                pair.edit_policy(*edits, broken)?;
                outcome.policy_edits += 1;
                outcome.broken_edits += u64::from(broken);
            }
            _ = sample_tick.tick() => {
                for (peak, &pid) in outcome.peaks.iter_mut().zip(&pids) {
                    *peak = peak.max(Held::sample(pid)?);
                }
            }
            Some(done) = attempts.join_next(), if !attempts.is_empty() => record(outcome, done?),
            Some(seen) = probes.join_next(), if !probes.is_empty() => {
                outcome.rotations_seen += u64::from(seen?);
            }
        }
    }
    // A broken edit must not outlive the phase: the next phase and the final checks start from a
    // good policy.
    if edits.is_multiple_of(3) {
        *edits += 1;
        pair.edit_policy(*edits, false)?;
        outcome.policy_edits += 1;
    }
    while let Some(done) = attempts.join_next().await {
        record(outcome, done?);
    }
    while let Some(seen) = probes.join_next().await {
        outcome.rotations_seen += u64::from(seen?);
    }
    Ok(())
}

fn record(outcome: &mut MixOutcome, (kind, result): (BadClient, super::bad_clients::Outcome)) {
    *outcome
        .bad
        .entry(kind)
        .or_default()
        .entry(result.key())
        .or_default() += 1;
    if result.is_breach(kind) {
        outcome
            .breaches
            .push(format!("{kind:?} got {}", result.key()));
    }
}

/// Polls the inbound sidecar at `inbound` until it serves `leaf` or `within` passes.
async fn serves_within(
    inbound: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    leaf: Vec<u8>,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(served) = attacker::served_leaf(inbound, Arc::clone(&config)).await
            && served == leaf
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
