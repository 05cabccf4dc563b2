//! The admin endpoint under a slowloris flood (issue 19, finding 9): a
//! local user opens 200 connections that send part of a request head,
//! trickle a header line now and then and never finish, and reconnect as
//! soon as cplb closes one. Meanwhile `/healthz` is probed every 100 ms,
//! as a liveness probe would (a new connection each time). At least 99% of
//! the probes must be answered within 1 s, or the kubelet would restart a
//! healthy cplb. Benchmark-style: it prints the rate and the worst latency.
//! Run with 200 such clients (the figure), and with 600, more than
//! the endpoint's 256 places, where newcomers evict the oldest of them.
//!
//! Against the binary, whose control plane is one current-thread runtime.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{CplbProcess, Options};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROBE_EVERY: Duration = Duration::from_millis(100);
const RUN_FOR: Duration = Duration::from_secs(15);
/// A liveness probe's own timeout (the shipped manifests use 1 s).
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);
/// How long a probe is waited for before it counts as unanswered.
const GIVE_UP: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Flood {
    opened: AtomicUsize,
    closed_by_cplb: AtomicUsize,
}

/// One slowloris client: a partial request head, one more header line
/// every second, never the blank line that ends the head; reconnects
/// when cplb closes it.
async fn slowloris(admin: SocketAddr, flood: Arc<Flood>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(admin)).await
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        flood.opened.fetch_add(1, Ordering::Relaxed);
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .is_err()
        {
            flood.closed_by_cplb.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut n = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                // cplb closed it (EOF, a reset, or an error answer).
                r = s.read(&mut buf) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        flood.closed_by_cplb.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    n += 1;
                    let line = format!("X-Slow-{n}: a\r\n");
                    if s.write_all(line.as_bytes()).await.is_err() {
                        flood.closed_by_cplb.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

/// One liveness probe: a new connection, `GET /healthz`. Its latency if
/// cplb answered 200 within `GIVE_UP`.
async fn probe(admin: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        raw.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(GIVE_UP, exchange).await.ok()??;
    Some(start.elapsed())
}

/// One flood at a time: two at once would measure the machine, not cplb.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `attackers` slowloris clients for `RUN_FOR` while `/healthz` is probed:
/// at least 99% of the probes are answered within `ANSWERED_WITHIN`.
async fn flood(attackers: usize) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start("m").await;
    let mut p = CplbProcess::spawn(
        &TestConfig::new(&[up.addr]).admin().yaml(),
        Options::default(),
    );
    let admin = p.admin.expect("admin enabled");
    let flood = Arc::new(Flood::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..attackers)
        .map(|_| tokio::spawn(slowloris(admin, flood.clone(), stop.clone())))
        .collect();
    // The flood is in place before the first probe.
    wait_until("every attacker connected", || {
        flood.opened.load(Ordering::Relaxed) >= attackers
    })
    .await;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let started = Instant::now();
    let mut probes = Vec::new();
    while started.elapsed() < RUN_FOR {
        tick.tick().await;
        probes.push(tokio::spawn(probe(admin)));
    }
    let mut latencies = Vec::new();
    for pr in probes {
        latencies.push(pr.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let total = latencies.len();
    let in_time = latencies
        .iter()
        .filter(|l| l.is_some_and(|d| d <= ANSWERED_WITHIN))
        .count();
    let unanswered = latencies.iter().filter(|l| l.is_none()).count();
    let worst = latencies
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    let rate = in_time as f64 / total as f64;
    let (st, _, metrics) = http(admin, "GET", "/metrics").await;
    assert_eq!(st, 200);
    let m = common::metrics::Scrape::parse(&metrics);
    let closed = |reason| m.get("cplb_admin_connections_closed_total", &[("reason", reason)]);
    println!(
        "slowloris: {attackers} clients, {} connections opened, {} closed by cplb ({} at the 2 s head timeout, {} evicted for newcomers)",
        flood.opened.load(Ordering::Relaxed),
        flood.closed_by_cplb.load(Ordering::Relaxed),
        closed("head_timeout"),
        closed("evicted"),
    );
    println!(
        "/healthz every {PROBE_EVERY:?} for {RUN_FOR:?}: {in_time} of {total} answered within {ANSWERED_WITHIN:?} ({:.1}%), {unanswered} unanswered after {GIVE_UP:?}, worst answered {worst:?}",
        rate * 100.0
    );
    // The proxy itself kept working.
    let mut c = Client::connect(p.addr).await;
    c.ping("still proxying").await;
    assert!(p.is_running());
    assert!(
        rate >= 0.99,
        "only {:.1}% of the probes answered within {ANSWERED_WITHIN:?}",
        rate * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_through_200_slowloris_clients() {
    flood(200).await;
}

/// More clients than places: each newcomer (a probe too) takes the place
/// of the oldest one still sending its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_through_more_slowloris_clients_than_places() {
    flood(600).await;
}
