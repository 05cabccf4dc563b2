//! Passive health and failover: refused, blackholed, recovery, last resort.

mod common;

use std::net::SocketAddr;

use common::*;
use cplb::ring::{Ring, hash_key};

const NODE: &str = "node-a";

/// Orders `addrs` the way the ring walks them for `node`: first is the
/// node's own master, then its failover order.
fn walk_order(node: &str, addrs: &[SocketAddr]) -> Vec<usize> {
    let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ring = Ring::new(texts.iter().map(|s| (s.as_str(), 1))).unwrap();
    ring.walk(hash_key(node.as_bytes())).collect()
}

/// `hash.key: node` with node id `node`.
fn node_conf(node: &str, addrs: &[SocketAddr]) -> TestConfig {
    TestConfig::new(addrs).node_id(node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_master_fails_over_within_the_same_client_connect() {
    let b = FakeUpstream::start("b").await;
    let c = FakeUpstream::start("c").await;
    let (dead, node, addrs) = dead_first(&[b.addr, c.addr]);
    let second = addrs[walk_order(&node, &addrs)[1]];
    let second_name = if second == b.addr { "b" } else { "c" };

    let proxy = Proxy::start(node_conf(&node, &addrs).config()).await;
    for i in 0..5 {
        let mut cl = Client::connect(proxy.addr).await;
        assert_eq!(
            cl.upstream, second_name,
            "connection {i} fails over to the next master on the ring"
        );
        cl.ping("x").await;
    }
    let s = proxy.scrape();
    let up = dead.to_string();
    assert_eq!(
        s.get(
            "cplb_connect_failures_total",
            &[("upstream", &up), ("reason", "refused")]
        ),
        1.0,
        "max_fails=1: the dead master is tried once, then skipped for fail_timeout"
    );
    assert_eq!(s.get("cplb_upstream_up", &[("upstream", &up)]), 0.0);
    assert_eq!(
        s.get("cplb_upstream_state_changes_total", &[("upstream", &up)]),
        1.0
    );
    proxy.shutdown().await;
}

/// A node id whose first ring choice among `first` and `others` is
/// `first`. The node id is what varies: a random address lands first only
/// with the share of the ring the others leave it just after the node's
/// hash, which can be tiny (a flake, once in tens of runs, with 200 tries).
fn with_first(first: SocketAddr, others: &[SocketAddr]) -> Option<(String, Vec<SocketAddr>)> {
    let mut addrs = vec![first];
    addrs.extend_from_slice(others);
    (0..256)
        .map(|i| format!("{NODE}-{i}"))
        .find(|node| addrs[walk_order(node, &addrs)[0]] == first)
        .map(|node| (node, addrs))
}

/// A refused address, and a node id that the ring sends to it first among
/// `others`.
fn dead_first(others: &[SocketAddr]) -> (SocketAddr, String, Vec<SocketAddr>) {
    let d = refused_addr();
    let (node, addrs) =
        with_first(d, others).expect("a node id whose first choice is the dead address");
    (d, node, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_master_costs_the_timeout_at_most_max_fails_times() {
    let b = FakeUpstream::start("b").await;
    // A node id whose first choice is the blackhole.
    let hole = Blackhole::start();
    let (node, addrs) =
        with_first(hole.addr, &[b.addr]).expect("a node id sent to the blackhole first");
    let hole_addr = hole.addr;
    let conf = node_conf(&node, &addrs)
        .unset("shutdown_grace")
        .set("connect_timeout", "300ms")
        .each_upstream("max_fails", 2);
    let proxy = Proxy::start(conf.config()).await;
    for i in 0..8 {
        let mut c = Client::connect(proxy.addr).await;
        assert_eq!(c.upstream, "b", "connection {i}");
        c.ping("x").await;
    }
    let s = proxy.scrape();
    assert_eq!(
        s.get(
            "cplb_connect_failures_total",
            &[("upstream", &hole_addr.to_string()), ("reason", "timeout")]
        ),
        2.0,
        "only max_fails=2 connections pay the connect timeout"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_down_master_is_tried_again_after_fail_timeout_and_recovers() {
    let b = FakeUpstream::start("b").await;
    let (dead, node, addrs) = dead_first(&[b.addr]);
    let conf = node_conf(&node, &addrs)
        .workers(1)
        .unset("shutdown_grace")
        .fail_timeout(Some("300ms"))
        .each_upstream("max_fails", 1);
    let proxy = Proxy::start(conf.config()).await;
    assert_eq!(Client::connect(proxy.addr).await.upstream, "b");
    // The master comes back on the same address.
    let a = FakeUpstream::start_at("a", dead).await;
    let mut back = false;
    let end = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < end {
        if Client::connect(proxy.addr).await.upstream == "a" {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(back, "the node returns to its master after fail_timeout");
    let s = proxy.scrape();
    let up = dead.to_string();
    assert_eq!(s.get("cplb_upstream_up", &[("upstream", &up)]), 1.0);
    assert_eq!(
        s.get("cplb_upstream_state_changes_total", &[("upstream", &up)]),
        2.0
    );
    // And it sticks there again.
    for _ in 0..3 {
        assert_eq!(Client::connect(proxy.addr).await.upstream, "a");
    }
    assert!(a.accepted() >= 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_masters_down_still_tries_them_all_as_last_resort() {
    let d1 = refused_addr();
    let d2 = refused_addr();
    let proxy = Proxy::start(node_conf(NODE, &[d1, d2]).config()).await;
    // Both refuse: the client is closed, and both are marked down.
    assert!(Client::connect_from(None, proxy.addr).await.is_none());
    let s = proxy.scrape();
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &d1.to_string())]),
        0.0
    );
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &d2.to_string())]),
        0.0
    );
    assert_eq!(
        s.get(
            "cplb_client_connections_rejected_total",
            &[("reason", "no_upstream")]
        ),
        1.0
    );

    // One comes back while both are still marked down (fail_timeout 60s):
    // the last resort finds it.
    let _u = FakeUpstream::start_at("back", d2).await;
    for _ in 0..3 {
        let mut c = Client::connect(proxy.addr).await;
        assert_eq!(c.upstream, "back");
        c.ping("x").await;
    }
    let s = proxy.scrape();
    assert_eq!(
        s.get("cplb_all_upstreams_down_total", &[]),
        1.0,
        "one episode"
    );
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &d2.to_string())]),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_tries_limits_failover() {
    let b = FakeUpstream::start("b").await;
    let (_dead, node, addrs) = dead_first(&[b.addr]);
    let proxy = Proxy::start(
        node_conf(&node, &addrs)
            .set("next_upstream_tries", 1)
            .config(),
    )
    .await;
    assert!(
        Client::connect_from(None, proxy.addr).await.is_none(),
        "one try: the refused master is the only one tried"
    );
    // Now it is marked down, so the single try goes to b.
    assert_eq!(Client::connect(proxy.addr).await.upstream, "b");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_name_is_an_unusable_upstream_not_a_crash() {
    let b = FakeUpstream::start("b").await;
    let conf = TestConfig::new(&[])
        .workers(1)
        .unset("shutdown_grace")
        .fail_timeout(None)
        .hash_key("connection")
        .upstream_named("no-such-master.invalid:6443")
        .upstream_named(&b.addr.to_string());
    let proxy = Proxy::start(conf.config()).await;
    for _ in 0..10 {
        assert_eq!(Client::connect(proxy.addr).await.upstream, "b");
    }
    let s = proxy.scrape();
    assert!(
        s.get(
            "cplb_connect_failures_total",
            &[
                ("upstream", "no-such-master.invalid:6443"),
                ("reason", "resolve")
            ]
        ) >= 1.0
    );
    proxy.shutdown().await;
}
