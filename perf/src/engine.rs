//! The load runner: drives one [`Exchange`] per worker, open loop (fixed rate, latency from each
//! request's intended send time) or closed loop (`--rate max`, latency from the actual send).
//!
//! Open loop uses one global schedule shared by all workers rather than one per connection: a
//! request goes to whichever worker is free, so a single slow connection delays only its own
//! request, while a target that stalls as a whole makes every request scheduled during the stall
//! wait, and that wait is counted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::pacer::{self, PacerClock, Schedule};
use crate::rate::Rate;
use crate::recorder::{ErrorKind, Recorder};

/// One unit of work a worker repeats: a request and its response on a kept-alive connection, a
/// new connection with a handshake, an echo round trip.
pub trait Exchange: Send + 'static {
    /// Performs one operation; connects first if the worker has no live connection.
    fn exchange(&mut self) -> impl Future<Output = Result<(), ErrorKind>> + Send;

    /// Called after a failed exchange: forget the connection if `cause` may have broken it, so the
    /// next exchange starts afresh (an HTTP 5xx leaves a connection usable, a timeout does not).
    fn reset(&mut self, cause: ErrorKind);
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Fixed rate (open loop) or max (closed loop).
    pub rate: Rate,
    /// How long to send for. Requests still in flight at the end are awaited.
    pub duration: Duration,
    /// Longest one exchange may take, counted from its intended send time (open loop) or its
    /// send (closed loop), before it counts as a `timeout` error.
    pub timeout: Duration,
    /// How the open-loop pacer keeps time.
    pub pacer: PacerClock,
}

/// What a run measured, with the workers' exchanges handed back for mode-specific figures.
#[derive(Debug)]
pub struct RunOutcome<E> {
    /// All workers' measurements merged.
    pub recorder: Recorder,
    /// From the first intended send to the last completion.
    pub elapsed: Duration,
    /// Operations that completed successfully.
    pub completed: u64,
    /// Operations the schedule asked for (open loop) or started (closed loop).
    pub attempted: u64,
    /// The exchanges, one per worker, in worker order.
    pub exchanges: Vec<E>,
}

impl<E> RunOutcome<E> {
    /// Successful operations per second over the whole run.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// A worker's measurements so far.
#[derive(Default)]
struct Tally {
    recorder: Recorder,
    completed: u64,
    attempted: u64,
}

/// Runs `spec` with one worker per exchange (each typically owns one connection).
pub async fn run<E: Exchange>(spec: LoadSpec, exchanges: Vec<E>) -> anyhow::Result<RunOutcome<E>> {
    anyhow::ensure!(!exchanges.is_empty(), "a run needs at least one connection");
    let workers = exchanges.len();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    match spec.rate {
        Rate::PerSecond(rate) => {
            let schedule = Schedule::new(start, rate, spec.duration);
            let tickets = Arc::new(Semaphore::new(0));
            let next = Arc::new(AtomicU64::new(0));
            pacer::spawn(schedule, Arc::clone(&tickets), workers, spec.pacer)
                .context("could not start the pacer thread")?;
            for exchange in exchanges {
                let (tickets, next) = (Arc::clone(&tickets), Arc::clone(&next));
                handles.push(tokio::spawn(open_loop_worker(
                    exchange,
                    schedule,
                    tickets,
                    next,
                    spec.timeout,
                )));
            }
        }
        Rate::Max => {
            let deadline = start + spec.duration;
            for exchange in exchanges {
                handles.push(tokio::spawn(closed_loop_worker(
                    exchange,
                    deadline,
                    spec.timeout,
                )));
            }
        }
    }
    let mut outcome = RunOutcome {
        recorder: Recorder::default(),
        elapsed: Duration::ZERO,
        completed: 0,
        attempted: 0,
        exchanges: Vec::with_capacity(workers),
    };
    for handle in handles {
        let (exchange, tally) = handle.await.context("a load worker panicked")?;
        outcome.recorder.merge(&tally.recorder);
        outcome.completed += tally.completed;
        outcome.attempted += tally.attempted;
        outcome.exchanges.push(exchange);
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

async fn open_loop_worker<E: Exchange>(
    mut exchange: E,
    schedule: Schedule,
    tickets: Arc<Semaphore>,
    next: Arc<AtomicU64>,
    timeout: Duration,
) -> (E, Tally) {
    let mut tally = Tally::default();
    loop {
        // The semaphore is never closed; an error could only mean it was, so stop either way.
        let Ok(ticket) = tickets.acquire().await else {
            break;
        };
        ticket.forget();
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= schedule.count {
            break;
        }
        // Tickets are released at intended times and taken in order, so request `i` is due now
        // or overdue; the overdue part is queueing delay and belongs in its latency.
        // The timeout runs from the intended send time too: a request already that late when a
        // worker frees up has failed without being sent, and a dead target cannot keep the run
        // going for (requests x timeout) after the schedule ends.
        let intended = schedule.intended(i);
        tally.one(&mut exchange, intended, intended + timeout).await;
    }
    (exchange, tally)
}

async fn closed_loop_worker<E: Exchange>(
    mut exchange: E,
    deadline: Instant,
    timeout: Duration,
) -> (E, Tally) {
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        tally.one(&mut exchange, sent, sent + timeout).await;
    }
    (exchange, tally)
}

impl Tally {
    async fn one<E: Exchange>(&mut self, exchange: &mut E, intended: Instant, deadline: Instant) {
        self.attempted += 1;
        let sent = Instant::now();
        if sent >= deadline {
            self.recorder.error(ErrorKind::Timeout);
            return;
        }
        self.recorder
            .send_lag
            .record(sent.saturating_duration_since(intended));
        match tokio::time::timeout_at(deadline, exchange.exchange()).await {
            Ok(Ok(())) => {
                let done = Instant::now();
                self.recorder.latency.record(done - intended);
                self.recorder.service.record(done - sent);
                self.completed += 1;
            }
            Ok(Err(kind)) => {
                self.recorder.error(kind);
                exchange.reset(kind);
            }
            Err(_elapsed) => {
                self.recorder.error(ErrorKind::Timeout);
                exchange.reset(ErrorKind::Timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exchange in simulated time: instant, except that call number `stall_at` takes `stall`.
    struct Simulated {
        calls: u64,
        stall_at: u64,
        stall: Duration,
    }

    impl Exchange for Simulated {
        async fn exchange(&mut self) -> Result<(), ErrorKind> {
            self.calls += 1;
            if self.calls == self.stall_at {
                tokio::time::sleep(self.stall).await;
            }
            Ok(())
        }

        fn reset(&mut self, _: ErrorKind) {}
    }

    fn spec(rate: Rate, duration: Duration) -> LoadSpec {
        LoadSpec {
            rate,
            duration,
            timeout: Duration::from_secs(5),
            pacer: PacerClock::Tokio,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_the_queue_behind_a_stall() {
        let ex = Simulated {
            calls: 0,
            stall_at: 101,
            stall: Duration::from_millis(100),
        };
        let out = run(
            spec(Rate::PerSecond(1000.0), Duration::from_secs(1)),
            vec![ex],
        )
        .await
        .unwrap();
        assert_eq!(out.attempted, 1000);
        assert_eq!(out.completed, 1000);
        // Request 100 (0-based) stalls 100 ms; requests 101..=199 were due during the stall and
        // finish right after it, request k with latency (200 - k) ms. Half the stall or more:
        // requests 100..=150.
        let slow = out
            .recorder
            .latency
            .count_at_least(Duration::from_millis(50));
        assert!((49..=52).contains(&slow), "{slow}");
        assert!(out.recorder.latency.max_us() >= 100_000);
        // Service time (what coordinated omission would report) sees only the stalled request.
        assert_eq!(
            out.recorder
                .service
                .count_at_least(Duration::from_millis(50)),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_runs_back_to_back() {
        struct Ten;
        impl Exchange for Ten {
            async fn exchange(&mut self) -> Result<(), ErrorKind> {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(())
            }
            fn reset(&mut self, _: ErrorKind) {}
        }
        let out = run(spec(Rate::Max, Duration::from_millis(100)), vec![Ten, Ten])
            .await
            .unwrap();
        assert_eq!(out.completed, 20);
        assert_eq!(out.recorder.latency.quantile_us(0.5) / 1000, 10);
        assert!(
            (out.achieved_rate() - 200.0).abs() < 1.0,
            "{}",
            out.achieved_rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_target_ends_the_run_one_timeout_after_the_schedule() {
        struct Dead;
        impl Exchange for Dead {
            async fn exchange(&mut self) -> Result<(), ErrorKind> {
                std::future::pending().await
            }
            fn reset(&mut self, _: ErrorKind) {}
        }
        let spec = LoadSpec {
            timeout: Duration::from_secs(1),
            ..spec(Rate::PerSecond(100.0), Duration::from_secs(2))
        };
        let out = run(spec, vec![Dead, Dead]).await.unwrap();
        assert_eq!(out.attempted, 200);
        assert_eq!(out.recorder.errors[&ErrorKind::Timeout], 200);
        assert!(
            out.elapsed <= Duration::from_millis(3100),
            "{:?}",
            out.elapsed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_timeouts_are_counted_not_timed() {
        struct Flaky(u64);
        impl Exchange for Flaky {
            async fn exchange(&mut self) -> Result<(), ErrorKind> {
                self.0 += 1;
                match self.0 % 3 {
                    0 => Err(ErrorKind::Http5xx),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            fn reset(&mut self, _: ErrorKind) {}
        }
        let out = run(
            spec(Rate::PerSecond(10.0), Duration::from_secs(3)),
            vec![Flaky(0)],
        )
        .await
        .unwrap();
        assert_eq!(out.attempted, 30);
        assert_eq!(out.completed, 10);
        assert_eq!(out.recorder.errors[&ErrorKind::Http5xx], 10);
        assert_eq!(out.recorder.errors[&ErrorKind::Timeout], 10);
        assert_eq!(out.recorder.latency.len(), 10);
    }
}
