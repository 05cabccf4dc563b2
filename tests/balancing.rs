//! Where connections go: spread of nodes, stickiness, key modes.

mod common;

use std::collections::HashMap;

use common::*;
use cplb::ring::{Ring, hash_key};

/// The reference setup: three masters, weight 5.
fn reference_ring() -> Ring {
    Ring::new([
        ("server1.k8s.local:6443", 5),
        ("server2.k8s.local:6443", 5),
        ("server3.k8s.local:6443", 5),
    ])
    .unwrap()
}

#[test]
fn nodes_spread_across_masters_within_ten_percent_of_ring_shares() {
    let ring = reference_ring();
    let shares = ring.shares();
    let nodes = 3000;
    let mut counts = [0usize; 3];
    for i in 0..nodes {
        // Typical node names: worker-17, ip-10-0-3-17.ec2.internal...
        let id = if i % 2 == 0 {
            format!("worker-{i}")
        } else {
            format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250)
        };
        counts[ring.first(hash_key(id.as_bytes())).unwrap()] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let expected = shares[i] * nodes as f64;
        let dev = (c as f64 - expected).abs() / expected;
        println!(
            "master {i}: {c} nodes, ring share {:.3}, expected {expected:.0}, off by {:.1}%",
            shares[i],
            dev * 100.0
        );
        assert!(
            dev <= 0.10,
            "master {i}: {c} nodes vs {expected:.0} expected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_node_routes_each_node_to_its_ring_master_and_sticks() {
    let ups = [
        FakeUpstream::start("m0").await,
        FakeUpstream::start("m1").await,
        FakeUpstream::start("m2").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let ring = Ring::new(
        addrs
            .iter()
            .map(|a| (a.to_string(), 1))
            .collect::<Vec<_>>()
            .iter()
            .map(|(s, w)| (s.as_str(), *w)),
    )
    .unwrap();
    let mut landed = HashMap::new();
    for n in 0..24 {
        let node = format!("node-{n}");
        let cfg = TestConfig::new(&addrs).node_id(&node).config();
        let proxy = Proxy::start(cfg).await;
        let expected = format!("m{}", ring.first(hash_key(node.as_bytes())).unwrap());
        for _ in 0..5 {
            let mut c = Client::connect(proxy.addr).await;
            assert_eq!(
                c.upstream, expected,
                "{node} must always land on its ring master"
            );
            c.ping("hello").await;
        }
        *landed.entry(expected).or_insert(0) += 1;
        proxy.shutdown().await;
    }
    assert_eq!(
        landed.len(),
        3,
        "24 nodes should reach all 3 masters: {landed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_connection_spreads_one_nodes_connections() {
    let ups = [
        FakeUpstream::start("m0").await,
        FakeUpstream::start("m1").await,
        FakeUpstream::start("m2").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let proxy = Proxy::start(TestConfig::new(&addrs).hash_key("connection").config()).await;
    let mut seen = HashMap::new();
    for _ in 0..60 {
        let c = Client::connect(proxy.addr).await;
        *seen.entry(c.upstream).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "connections of one client spread: {seen:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_remote_addr_follows_the_ring_for_each_source_ip() {
    let ups = [
        FakeUpstream::start("m0").await,
        FakeUpstream::start("m1").await,
        FakeUpstream::start("m2").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ring = Ring::new(texts.iter().map(|s| (s.as_str(), 1))).unwrap();
    let proxy = Proxy::start(TestConfig::new(&addrs).hash_key("remote_addr").config()).await;
    for i in 1..=50u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, 3, i);
        let c = Client::connect_from(Some(ip.into()), proxy.addr)
            .await
            .unwrap();
        let expected = ring.first(hash_key(ip.to_string().as_bytes())).unwrap();
        assert_eq!(c.upstream, format!("m{expected}"), "client {ip}");
    }
    proxy.shutdown().await;
}
