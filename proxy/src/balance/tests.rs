use std::time::Duration;

use super::*;

async fn upstream(endpoints: &[&str], balancer: Balancer, threshold: u32) -> Upstream<()> {
    let mut config = UpstreamConfig::single(endpoints[0].parse().unwrap());
    config.endpoints = endpoints.iter().map(|e| e.parse().unwrap()).collect();
    config.balancer = balancer;
    config.failure_threshold = threshold;
    Upstream::new(
        "test",
        config,
        &UpstreamMetrics::default(),
        Box::new(|_, _| ()),
    )
    .await
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn round_robin_takes_each_endpoint_in_turn_and_skips_the_tried() {
    let u = upstream(
        &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        Balancer::RoundRobin,
        5,
    )
    .await;
    let picks: Vec<u16> = (0..6).map(|_| u.pick(&[]).unwrap().addr.port()).collect();
    assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    let tried = [addr("127.0.0.1:1"), addr("127.0.0.1:2")];
    for _ in 0..5 {
        assert_eq!(u.pick(&tried).unwrap().addr.port(), 3);
    }
    let all = [tried[0], tried[1], addr("127.0.0.1:3")];
    assert!(u.pick(&all).is_none());
}

#[tokio::test]
async fn an_ejected_endpoint_gets_nothing_until_every_endpoint_is_ejected() {
    let u = upstream(&["127.0.0.1:1", "127.0.0.1:2"], Balancer::P2cEwma, 2).await;
    let bad = u.inner.endpoints.load()[0].clone();
    bad.failed(Instant::now(), "refused");
    assert!(
        bad.available(Instant::now()),
        "one failure is below the threshold"
    );
    bad.failed(Instant::now(), "refused");
    for _ in 0..50 {
        assert_eq!(u.pick(&[]).unwrap().addr.port(), 2);
    }
    let other = u.inner.endpoints.load()[1].clone();
    other.failed(Instant::now(), "refused");
    other.failed(Instant::now(), "refused");
    // Panic mode: all ejected, so all take traffic again (and a retry still finds the other).
    let first = u.pick(&[]).expect("panic mode still picks");
    let second = u.pick(&[first.addr]).expect("and a retry finds the other");
    assert_ne!(first.addr, second.addr);
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_most_requests_to_the_faster_endpoint() {
    let u = upstream(&["127.0.0.1:1", "127.0.0.1:2"], Balancer::P2cEwma, 5).await;
    let mut counts = [0u32; 2];
    for _ in 0..400 {
        let e = u.pick(&[]).unwrap();
        let delay = if e.addr.port() == 1 { 1 } else { 20 };
        counts[usize::from(e.addr.port() - 1)] += 1;
        e.track(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
        e.succeeded();
    }
    assert!(counts[1] < 400 / 10, "the slow endpoint got {counts:?}");
}

#[tokio::test]
async fn a_dns_name_stands_for_each_of_its_addresses() {
    let u = upstream(&["localhost:9"], Balancer::RoundRobin, 5).await;
    let addrs: Vec<SocketAddr> = u.inner.endpoints.load().iter().map(|e| e.addr).collect();
    assert!(addrs.contains(&addr("127.0.0.1:9")), "{addrs:?}");
    assert_eq!(u.pick(&[]).unwrap().name.host(), "localhost");
}

#[test]
fn the_retry_budget_allows_its_floor_then_refuses() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let u = rt.block_on(upstream(
        &["127.0.0.1:1", "127.0.0.1:2"],
        Balancer::RoundRobin,
        5,
    ));
    // No requests deposited: only the per-second floor (10) over the 10 s window is available.
    let granted = (0..1000).filter(|_| u.withdraw()).count();
    assert!((10..=100).contains(&granted), "{granted}");
}
