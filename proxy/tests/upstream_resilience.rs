//! Upstream resilience through a sidecar pair (real sockets, real mTLS): three app replicas
//! behind the inbound sidecar, one killed and restarted under a fixed-rate load, one slowed,
//! one that breaks requests after reading them, and all dead.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_identity::test_ca::TestCa;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One app replica that can be killed (listener and every connection gone at once, as a dead
/// process) and started again on the same port.
struct Replica {
    addr: SocketAddr,
    delay: Duration,
    served: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl Replica {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut replica = Self {
            addr: listener.local_addr().unwrap(),
            delay,
            served: Arc::default(),
            tasks: None,
        };
        replica.serve(listener);
        replica
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let (served, delay) = (self.served.clone(), self.delay);
        let conns = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let held = conns.clone();
        tasks.spawn(async move {
            let _held = held;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let served = served.clone();
                conns.lock().await.spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let served = served.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            served.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Drops the listener and every connection (the JoinSets abort their tasks).
    async fn kill(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn pair(
    endpoints: &[SocketAddr],
    extra: &str,
) -> (Workload, Workload, SocketAddr, SocketAddr) {
    let ca = TestCa::new(TD);
    let server = Workload::new(&ca, LEDGER);
    let client = Workload::new(&ca, PAYMENTS);
    let policy = server.write("policy/policy.toml", &allow_only(&id(PAYMENTS)));
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let inbound = server
        .start(&format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\npolicy = \"{}\"\n\
             upstream = {{ endpoints = [{}]{extra} }}\n",
            policy.display(),
            list.join(", ")
        ))
        .await;
    let outbound = client
        .start(&format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\ntarget = \"{}\"\nexpect = [\"{}\"]\n",
            inbound.inbound_addrs[0],
            id(LEDGER)
        ))
        .await;
    let out = (outbound.outbound_addrs[0], inbound.admin_addr);
    // The running proxies live as long as the test's runtime.
    std::mem::forget((inbound, outbound));
    (server, client, out.0, out.1)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
    let request = hyper::Request::get(uri)
        .header("host", "ledger.bank.example")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// The value of the metric line starting with `prefix` (labels included), or 0.
async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let response = client()
        .get(format!("http://{admin}/metrics").parse().unwrap())
        .await
        .unwrap();
    let body: Incoming = response.into_body();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_mid_run_fails_no_request() {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Replica::start(Duration::ZERO).await);
    }
    let endpoints: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (_server, _client, outbound, admin) = pair(&endpoints, ", ejection_min = \"500ms\"").await;
    let client = client();

    const TOTAL: usize = 10_000;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000)); // 1,000 req/s
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = JoinSet::new();
    let mut served_at_restart = 0;
    for n in 0..TOTAL {
        tick.tick().await;
        if n == 3_000 {
            replicas[0].kill().await;
        }
        if n == 6_000 {
            replicas[0].restart().await;
            served_at_restart = replicas[0].served.load(Ordering::Relaxed);
        }
        let client = client.clone();
        requests.spawn(async move { get(&client, outbound, "/ledger").await });
    }
    let mut failed = Vec::new();
    while let Some(result) = requests.join_next().await {
        match result.unwrap() {
            Ok(200) => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {TOTAL} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let killed = endpoints[0];
    let ejections = metric(
        admin,
        &format!("meshguard_upstream_ejections_total{{listener=\"inbound:127.0.0.1:0\",endpoint=\"{killed}\"}}"),
    )
    .await;
    assert!(ejections >= 1.0, "the killed replica was never ejected");
    // Back after the restart: it serves again (bounded wait while traffic flows).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while replicas[0].served.load(Ordering::Relaxed) <= served_at_restart {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted replica never came back"
        );
        assert_eq!(get(&client, outbound, "/ledger").await, Ok(200));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_20ms_slower_gets_under_15_percent_after_warm_up() {
    let fast_a = Replica::start(Duration::ZERO).await;
    let fast_b = Replica::start(Duration::ZERO).await;
    let slow = Replica::start(Duration::from_millis(20)).await;
    let (_server, _client, outbound, _admin) =
        pair(&[fast_a.addr, fast_b.addr, slow.addr], "").await;
    let client = client();
    let run = |n: usize| {
        let client = client.clone();
        async move {
            let mut workers = JoinSet::new();
            for _ in 0..8 {
                let client = client.clone();
                workers.spawn(async move {
                    for _ in 0..n / 8 {
                        assert_eq!(get(&client, outbound, "/ledger").await, Ok(200));
                    }
                });
            }
            while let Some(done) = workers.join_next().await {
                done.unwrap();
            }
        }
    };
    run(200).await; // warm-up: every replica gets measured
    let before = [&fast_a, &fast_b, &slow].map(|r| r.served.load(Ordering::Relaxed));
    run(2_000).await;
    let after = [&fast_a, &fast_b, &slow].map(|r| r.served.load(Ordering::Relaxed));
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    assert!(
        (delta[2] as f64) < 0.15 * total as f64,
        "the slow replica got {} of {total} ({delta:?})",
        delta[2]
    );
}

/// Reads a request head and its body, then closes without answering: the request reached it.
async fn breaking_replica() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                if let Ok(n) = stream.read(&mut buf).await
                    && n > 0
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_a_failing_replica_is_not_retried_but_a_get_is() {
    let (bad, bad_seen) = breaking_replica().await;
    let good = Replica::start(Duration::ZERO).await;
    let (server, _client, outbound, _admin) =
        pair(&[bad, good.addr], ", balancer = \"round-robin\"").await;
    let post_client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let request = hyper::Request::post(format!("http://{outbound}/transfer"))
            .header("host", "ledger.bank.example")
            .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
            .unwrap();
        statuses.push(
            post_client
                .request(request)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    let line = server
        .wait_for_log(|l| l["http"]["method"] == "POST" && l["http"]["status"] == 502)
        .await;
    assert_eq!(line["attempts"], 1, "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("not idempotent"),
        "{line}"
    );
    // A GET that meets the breaking replica is sent to the other one.
    let client = client();
    let seen_before = bad_seen.load(Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(get(&client, outbound, "/ledger").await, Ok(200));
    }
    assert!(
        bad_seen.load(Ordering::Relaxed) > seen_before,
        "round robin sent none to it"
    );
    let retried = server
        .wait_for_log(|l| l["http"]["method"] == "GET" && l["attempts"] == 2)
        .await;
    assert_eq!(retried["upstream"], good.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_against_dead_replicas_is_capped_by_the_budget() {
    // Ports that were bound and released: nothing listens there.
    let mut dead = Vec::new();
    for _ in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        dead.push(l.local_addr().unwrap());
    }
    let (_server, _client, outbound, admin) = pair(&dead, "").await;
    let client = client();
    const REQUESTS: u32 = 500;
    let mut bad_gateway = 0;
    for _ in 0..REQUESTS {
        if get(&client, outbound, "/ledger").await == Ok(502) {
            bad_gateway += 1;
        }
    }
    assert_eq!(bad_gateway, REQUESTS);
    let attempts = metric(admin, "meshguard_upstream_requests_total").await;
    let exhausted = metric(
        admin,
        "meshguard_upstream_retries_total{listener=\"inbound:127.0.0.1:0\",outcome=\"budget_exhausted\"}",
    )
    .await;
    // Without a budget, 3 attempts each: 1,500. The budget allows 20 % of requests plus a
    // reserve of 10/s over its 10 s window.
    let cap = f64::from(REQUESTS) * 1.2 + 100.0;
    assert!(
        attempts >= f64::from(REQUESTS) && attempts <= cap,
        "{attempts} attempts"
    );
    assert!(exhausted > 0.0, "the budget never refused a retry");
}
