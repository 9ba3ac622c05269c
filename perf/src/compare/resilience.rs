//! The resilience scenario: open-loop requests to a route over three replicas, run twice back to
//! back at the same rate, first steady, then with one replica killed (SIGKILL) a tenth of the way
//! in. The figures are the requests that failed in the run with the kill, and how much its p99
//! grew over the steady run's: the same target, the same rate, seconds apart, so the machine's
//! noise mostly cancels.
//!
//! Both runs last [`WINDOW`] at most, however long the comparison's runs are: the failover happens
//! in the first few milliseconds after the kill, and in a long run its requests would be too few
//! to move the p99 at all; over a short window it is the p99 *during the fault*.
//!
//! The killed replica is started again after the run and the proxies get [`SETTLE`] to take it
//! back (meshguard probes it on its next back-off expiry, nginx after `fail_timeout`, haproxy
//! after its next health check), so every target's next round starts with three replicas again.

use std::time::Duration;

use super::model::Figures;
use super::pool::UpstreamPool;
use crate::cli::HttpArgs;
use crate::measure;

/// The replica that is killed in every run.
const VICTIM: usize = 0;
/// Time for the proxies to readmit the restarted replica before the next run.
const SETTLE: Duration = Duration::from_secs(2);
/// The longest each of the two runs lasts.
const WINDOW: Duration = Duration::from_secs(2);

/// Runs `load` steady, then again with replica [`VICTIM`] killed a tenth of the way in, each for
/// its duration or [`WINDOW`], whichever is shorter; restarts the replica before returning, also
/// when the run failed.
pub async fn run(load: &HttpArgs, pool: &mut UpstreamPool) -> anyhow::Result<Figures> {
    let mut load = load.clone();
    load.load.duration = load.load.duration.min(WINDOW);
    let load = &load;
    let steady = measure::http(load).await?;
    let (fault, ()) = tokio::join!(measure::http(load), async {
        tokio::time::sleep(load.load.duration / 10).await;
        pool.kill(VICTIM);
    });
    // Waiting for the restarted replica to listen blocks; the generator is idle meanwhile.
    let restarted = tokio::task::block_in_place(|| pool.restart(VICTIM));
    let fault = fault?;
    restarted?;
    tokio::time::sleep(SETTLE).await;
    let failed: u64 = fault.errors.values().sum();
    Ok(Figures {
        achieved_rate: fault.achieved_rate,
        target_rate: fault.target_rate,
        completed: fault.completed,
        errors: steady.errors.values().sum(),
        latency_us: Some(fault.latency_us),
        steady_latency_us: Some(steady.latency_us),
        failed_during_fault: Some(failed),
        fault_added_p99_us: Some(fault.latency_us.p99 as i64 - steady.latency_us.p99 as i64),
        ..Figures::default()
    })
}
