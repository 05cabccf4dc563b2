//! The byte copy: integrity, half-close, idle timeout, connection limits.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mib_payloads_arrive_intact_both_ways_at_once() {
    let up = FakeUpstream::start("echo").await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).config()).await;
    let mut tasks = Vec::new();
    for k in 0..4 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr).await;
            let payload = pattern(8 * MIB + k * 4099);
            let expect = crc32fast::hash(&payload);
            let stream = c.reader.into_inner();
            let (mut r, mut w) = stream.into_split();
            let len = payload.len();
            // Write and read concurrently: an echo of 8 MiB cannot sit in
            // socket buffers, so a sequential test would deadlock.
            let writer = tokio::spawn(async move {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::with_capacity(len);
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), len, "every byte echoed back, then EOF");
            assert_eq!(crc32fast::hash(&got), expect, "bytes intact and in order");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = proxy.scrape();
    let total: f64 = (0..4).map(|k| (8 * MIB + k * 4099) as f64).sum();
    let u = up.addr.to_string();
    assert_eq!(
        s.get(
            "cplb_bytes_total",
            &[("upstream", &u), ("direction", "to_upstream")]
        ),
        total
    );
    // to_client also carries the 5-byte "echo\n" greeting of each connection.
    assert_eq!(
        s.get(
            "cplb_bytes_total",
            &[("upstream", &u), ("direction", "to_client")]
        ),
        total + 4.0 * 5.0
    );
    assert_eq!(s.get("cplb_connections_total", &[("upstream", &u)]), 4.0);
    wait_until("active gauge back to 0", || {
        proxy
            .scrape()
            .get("cplb_connections_active", &[("upstream", &u)])
            == 0.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_still_receives_the_whole_response() {
    let reply = 6 * MIB + 17;
    let up = FakeUpstream::start_mode("drain", Mode::Drain { reply }).await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).config()).await;
    let mut c = Client::connect(proxy.addr).await;
    assert_eq!(c.upstream, "drain");
    let request = pattern(3 * MIB);
    c.reader.get_mut().write_all(&request).await.unwrap();
    // Half-close: the upstream only answers after it sees EOF.
    c.reader.get_mut().shutdown().await.unwrap();
    let mut head = String::new();
    c.reader.read_line(&mut head).await.unwrap();
    assert_eq!(
        head.trim_end(),
        format!("{} {}", request.len(), crc32fast::hash(&request))
    );
    let mut body = Vec::new();
    c.reader.read_to_end(&mut body).await.unwrap();
    assert_eq!(body.len(), reply);
    assert_eq!(body, pattern(reply));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_only_connections_where_no_byte_moved() {
    let up = FakeUpstream::start("echo").await;
    // The busy client talks every 50 ms, a twentieth of the idle timeout,
    // so a loaded machine's scheduling delays cannot make it look idle.
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).idle_timeout("1s").config()).await;
    // Before the connect: the proxy's idle clock starts when the upstream's
    // greeting passes, a moment before the client has read it.
    let started = tokio::time::Instant::now();
    let mut idle = Client::connect(proxy.addr).await;
    let mut busy = Client::connect(proxy.addr).await;
    let mut idle_read = Box::pin(async move {
        let mut buf = [0u8; 1];
        let n = idle.reader.read(&mut buf).await.unwrap_or(0);
        (n, tokio::time::Instant::now())
    });
    let mut max_gap = Duration::ZERO;
    let mut last = tokio::time::Instant::now();
    let (n, closed_at) = loop {
        tokio::select! {
            r = &mut idle_read => break r,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                busy.ping("tick").await;
                max_gap = max_gap.max(last.elapsed());
                last = tokio::time::Instant::now();
                assert!(started.elapsed() < DEADLINE, "idle connection never closed");
            }
        }
    };
    assert_eq!(n, 0, "idle connection closed");
    let idle_for = closed_at - started;
    // The busy one outlives the idle one by another idle timeout.
    while started.elapsed() < idle_for + Duration::from_secs(1) {
        busy.ping("tick").await;
        max_gap = max_gap.max(last.elapsed());
        last = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    busy.ping("still open").await;
    println!(
        "idle client closed after {idle_for:?} (idle_timeout 1s); busy client's longest gap {max_gap:?}"
    );
    assert!(
        idle_for >= Duration::from_secs(1),
        "closed early: {idle_for:?}"
    );
    let s = proxy.scrape();
    assert_eq!(
        s.get(
            "cplb_connections_closed_total",
            &[
                ("upstream", &up.addr.to_string()),
                ("reason", "idle_timeout")
            ]
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_traffic_keeps_a_watch_alive() {
    // A watch: only the upstream talks, every 50 ms, for three idle
    // timeouts; a tick is a twentieth of the timeout, so scheduling delays
    // on a loaded machine cannot make the watch look idle.
    let up = FakeUpstream::start_mode("watch", Mode::Ticker { ms: 50 }).await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).idle_timeout("1s").config()).await;
    let mut c = Client::connect(proxy.addr).await;
    let started = tokio::time::Instant::now();
    let (mut ticks, mut max_gap, mut last) = (0, Duration::ZERO, started);
    while started.elapsed() < Duration::from_secs(3) {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, c.reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, line.as_str()), (5, "tick\n"), "the watch stays open");
        ticks += 1;
        max_gap = max_gap.max(last.elapsed());
        last = tokio::time::Instant::now();
    }
    println!(
        "watch: {ticks} ticks over 3 s of one-way traffic (idle_timeout 1s), longest gap {max_gap:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_clients_are_closed_old_ones_work() {
    let up = FakeUpstream::start("echo").await;
    let proxy = Proxy::start(
        TestConfig::new(&[up.addr])
            .set("max_connections", 2)
            .config(),
    )
    .await;
    let mut a = Client::connect(proxy.addr).await;
    let mut b = Client::connect(proxy.addr).await;
    assert!(
        Client::connect_from(None, proxy.addr).await.is_none(),
        "third client closed at once"
    );
    a.ping("a").await;
    b.ping("b").await;
    assert_eq!(
        proxy.scrape().get(
            "cplb_client_connections_rejected_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    drop(a);
    wait_until("slot freed", || {
        proxy.scrape().get("cplb_client_connections_active", &[]) == 1.0
    })
    .await;
    let mut c = Client::connect(proxy.addr).await;
    c.ping("c").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_propagates_to_client() {
    let up = FakeUpstream::start_mode("drain", Mode::Drain { reply: 10 }).await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).config()).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reader.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, c.reader.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.len(), "0 0\n".len() + 10);
    wait_until("client gauge back to 0", || {
        proxy.scrape().get("cplb_client_connections_active", &[]) == 0.0
    })
    .await;
    proxy.shutdown().await;
}

/// A client that speaks first (a TLS ClientHello, an HTTP request): its
/// first bytes go to the master during the first flight, before the copy
/// starts, and still count in `cplb_bytes_total` as the copy's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_speaks_first_has_its_first_bytes_counted() {
    // A master that waits for the client's request, then answers it.
    let master = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = master.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (s, _) = master.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            tokio::io::BufReader::new(r)
                .read_line(&mut line)
                .await
                .unwrap();
            w.write_all(format!("got {line}").as_bytes()).await.unwrap();
        }
    });
    let proxy = Proxy::start(TestConfig::new(&[addr]).config()).await;
    for request in ["GET /version\n", "GET /api/v1/nodes\n"] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, format!("got {request}"));
    }
    server.await.unwrap();
    let u = addr.to_string();
    let sent = ("GET /version\n".len() + "GET /api/v1/nodes\n".len()) as f64;
    let counted = |d: &'static str| {
        let u = u.clone();
        move |s: &common::metrics::Scrape| {
            s.get("cplb_bytes_total", &[("upstream", &u), ("direction", d)])
        }
    };
    wait_until("both connections closed", || {
        proxy
            .scrape()
            .get("cplb_connections_active", &[("upstream", &u)])
            == 0.0
    })
    .await;
    let s = proxy.scrape();
    assert_eq!(counted("to_upstream")(&s), sent, "the requests");
    assert_eq!(counted("to_client")(&s), sent + 8.0, "the answers");
    proxy.shutdown().await;
}
