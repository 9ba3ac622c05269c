//! Must show (perf issue): the open-loop generator's latency includes queueing delay. A real HTTP
//! server on 127.0.0.1 stalls as a whole for 100 ms once (like a GC pause); every request scheduled
//! during the stall must carry the wait in its latency, not only the few that were in flight.
//!
//! The assertions are on structure, not machine speed: requests scheduled during the stall are
//! those intended in a 100 ms window, so at rate R about R x 100 ms of them are late, and about
//! half of those by half the stall or more; a generator suffering coordinated omission would
//! count only the requests in flight (at most one per connection).

// Test helpers outside #[test] functions may unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_perf::engine::{self, LoadSpec};
use meshguard_perf::http::{HttpExchange, HttpTarget, HttpVersion};
use meshguard_perf::pacer::PacerClock;
use meshguard_perf::rate::Rate;
use meshguard_perf::report::LatencySummary;
use meshguard_perf::tls::TlsFiles;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

const STALL: Duration = Duration::from_millis(100);
const RATE: f64 = 500.0;
const CONNECTIONS: usize = 4;
/// The server stalls on this request (about 0.4 s into the run).
const STALL_AT: u64 = 200;

/// An HTTP server that, on request `STALL_AT`, stops answering anything for `STALL`.
async fn stalling_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let stall_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (served, stall_until) = (served.clone(), stall_until.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let (served, stall_until) = (served.clone(), stall_until.clone());
                    async move {
                        let n = served.fetch_add(1, Ordering::SeqCst);
                        let until = {
                            let mut stall = stall_until.lock().await;
                            if n == STALL_AT {
                                *stall = Some(Instant::now() + STALL);
                            }
                            *stall
                        };
                        // The whole server is paused: every request arriving during the stall
                        // waits for its end, as in a GC pause or a blocked event loop.
                        if let Some(until) = until {
                            tokio::time::sleep_until(until).await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(&b"ok"[..])))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_the_queue_behind_a_stall() {
    let addr = stalling_server().await;
    let url = format!("http://{addr}/");
    let target = Arc::new(
        HttpTarget::new(&url, HttpVersion::Http1, &TlsFiles::default())
            .await
            .unwrap(),
    );
    let mut exchanges = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut exchange = HttpExchange::new(target.clone());
        exchange.warm_up().await.unwrap();
        exchanges.push(exchange);
    }
    let spec = LoadSpec {
        rate: Rate::PerSecond(RATE),
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        pacer: PacerClock::Precise,
    };
    let out = engine::run(spec, exchanges).await.unwrap();

    // Open loop: every scheduled request was sent and answered, however late.
    assert_eq!(out.attempted, 500);
    assert_eq!(out.completed, 500, "errors: {:?}", out.recorder.errors);

    // Requests intended during the stall: about RATE x STALL = 50. Request k of them waits
    // (STALL - k / RATE), so about half (25) wait at least STALL / 2.
    let expected = RATE * STALL.as_secs_f64() / 2.0;
    let late = out.recorder.latency.count_at_least(STALL / 2) as f64;
    assert!(
        late >= 0.8 * expected && late <= 3.0 * expected,
        "{late} requests took >= {:?}; expected about {expected}",
        STALL / 2
    );

    // What a closed-loop generator would have measured: only the requests in flight stalled.
    let in_flight = out.recorder.service.count_at_least(STALL / 2);
    assert!(
        (1..=CONNECTIONS as u64).contains(&in_flight),
        "service time saw {in_flight} stalled requests"
    );

    // So the percentiles show the stall: 5% of requests were >= STALL / 2 late.
    let summary = LatencySummary::from(&out.recorder.latency);
    let uncorrected = LatencySummary::from(&out.recorder.service);
    println!("{late} late requests\ncorrected {summary:?}\nuncorrected {uncorrected:?}");
    assert!(summary.p99 >= 50_000, "{summary:?}");
    assert!(summary.max >= 99_000, "{summary:?}");
    assert!(
        uncorrected.p99 < summary.p99,
        "{uncorrected:?} vs {summary:?}"
    );
}
