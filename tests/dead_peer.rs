//! A master that vanishes mid-stream (power loss, a partition: no FIN, no
//! RST) is dropped within `tcp_user_timeout`, with active checks off, and
//! the client is closed so it reconnects to another master (issue 14).
//! cplb sets the timeout with keepalive, once the connection has been idle
//! for 5 s (a stalled connection moves nothing); the kernel counts it from
//! the first unanswered retransmission, so a timeout under 5 s ends at the
//! first retransmission after it was set.
//! The master is blackholed with iptables inside a private network
//! namespace, so the host's firewall is never touched.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{FakeUpstream, Proxy, TestConfig, require};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const TEST: &str = "a_vanished_master_is_dropped_within_the_user_timeout";

fn iptables(args: &[&str]) {
    let st = Command::new("iptables").args(args).status().unwrap();
    assert!(st.success(), "iptables {args:?}");
}

#[test]
fn a_vanished_master_is_dropped_within_the_user_timeout() {
    if !require::tool(TEST, "iptables", "iptables") {
        return;
    }
    let out = common::netns::run(TEST, &[], || async {
        let a = FakeUpstream::start_at("a", "127.0.0.2:0".parse().unwrap()).await;
        let port = a.addr.port();
        let b =
            FakeUpstream::start_at("b", SocketAddr::new("127.0.0.3".parse().unwrap(), port)).await;
        let addrs = [a.addr, b.addr];
        let text: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let ring = cplb::ring::Ring::new(text.iter().map(|a| (a.as_str(), 1))).unwrap();
        let node = (0..1000)
            .map(|i| format!("n{i}"))
            .find(|id| ring.first(cplb::ring::hash_key(id.as_bytes())) == Some(0))
            .unwrap();
        let user_timeout = Duration::from_secs(2);
        let proxy = Proxy::start(
            TestConfig::new(&addrs)
                .node_id(&node)
                .set("tcp_user_timeout", "2s")
                .set("connect_timeout", "1s")
                .config(),
        )
        .await;
        let mut c = common::Client::connect(proxy.addr).await;
        assert_eq!(c.upstream, "a");
        c.ping("before").await;
        // The master vanishes: every packet to or from it is dropped.
        iptables(&["-A", "INPUT", "-s", "127.0.0.2", "-j", "DROP"]);
        iptables(&["-A", "INPUT", "-d", "127.0.0.2", "-j", "DROP"]);
        let sent = Instant::now();
        // A request in flight: cplb forwards it, and it is never acked.
        c.reader.get_mut().write_all(b"in flight\n").await.unwrap();
        let mut line = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(60), c.reader.read_line(&mut line)).await;
        let closed_after = sent.elapsed();
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the client was not closed: {read:?} {line:?}"
        );
        // It reconnects, and lands on the other master.
        let again = common::Client::connect(proxy.addr).await;
        let s = proxy.scrape();
        let closed = s.get(
            "cplb_connections_closed_total",
            &[
                ("upstream", &a.addr.to_string()),
                ("reason", "upstream_timeout"),
            ],
        );
        drop(b);
        (closed_after, again.upstream, closed, user_timeout)
    });
    let Some((closed_after, reconnected_to, closed, user_timeout)) = out else {
        return;
    };
    println!(
        "client closed {closed_after:?} after its request to the vanished master (tcp_user_timeout {user_timeout:?}); reconnected to {reconnected_to}"
    );
    // 5 s of idleness before it is set, then the next retransmission.
    let bound = user_timeout.max(Duration::from_secs(5)) + Duration::from_secs(5);
    assert!(
        closed_after <= bound,
        "closed only after {closed_after:?} (bound {bound:?})"
    );
    assert_eq!(reconnected_to, "b");
    assert_eq!(closed, 1.0, "not counted as upstream_timeout");
}
