//! The hedged first flight (issue 14): a master that accepts TCP but never
//! answers cannot cut a node off. Real TLS servers (`openssl s_server`), one
//! of them frozen with SIGSTOP while its kernel keeps completing handshakes
//! into its backlog, and `hash.key: node` so that it is the node's home;
//! plain TCP masters that announce who they are for the rules of replay
//! and the budget.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{HealthCheck, Proxy, TestConfig, require};
use cplb::standin::pki::{Issued, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The node id whose ring home (`hash.key: node`) is `addrs[want]`.
fn node_homed_at(addrs: &[SocketAddr], want: usize) -> String {
    let text: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ring = cplb::ring::Ring::new(text.iter().map(|a| (a.as_str(), 1))).unwrap();
    (0..10_000)
        .map(|i| format!("node-{i}"))
        .find(|id| ring.first(cplb::ring::hash_key(id.as_bytes())) == Some(want))
        .expect("some node id is homed there")
}

/// `openssl s_server -www` on `addr`: a real TLS server, answering any GET
/// with a status page. Killed on drop (continued first if stopped).
struct TlsMaster {
    child: Child,
    addr: SocketAddr,
    cert: Issued,
}

impl TlsMaster {
    fn start(pki: &Pki, addr: SocketAddr, dir: &Path) -> Option<TlsMaster> {
        let cert = pki
            .server(&["kubernetes"], &[addr.ip()])
            .expect("server certificate");
        let (c, k) = (
            dir.join(format!("{}.crt", addr.ip())),
            dir.join(format!("{}.key", addr.ip())),
        );
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&c)
            .arg("-key")
            .arg(&k)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl");
        let mut m = TlsMaster { child, addr, cert };
        let end = Instant::now() + common::DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            if m.child.try_wait().ok().flatten().is_some() || Instant::now() > end {
                return None; // The port was taken: the caller picks another.
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(m)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for TlsMaster {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three real TLS masters on 127.0.0.2..4 sharing one port, as masters
/// share 6443.
fn tls_masters(pki: &Pki, dir: &Path) -> Vec<TlsMaster> {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started: Vec<Option<TlsMaster>> = (0..3)
            .map(|i| {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i));
                TlsMaster::start(pki, SocketAddr::new(ip, port), dir)
            })
            .collect();
        if started.iter().all(Option::is_some) {
            return started.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("no port free on 127.0.0.2..4");
}

fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One TLS request through `proxy`, one attempt (no retry): the master's
/// certificate and the time it took, or why it failed.
async fn tls_get(
    proxy: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, Duration), String> {
    let start = Instant::now();
    let attempt = async {
        let tcp = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("kubernetes").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        // s_server closes without close_notify: what arrived is the answer.
        let _ = tls.read_to_end(&mut body).await;
        let head = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
        if !head.starts_with("HTTP/1.0 200") {
            return Err(format!("answer {head:?}"));
        }
        Ok(peer)
    };
    // Far beyond any bound below: a hang is reported, not waited out.
    match tokio::time::timeout(Duration::from_secs(20), attempt).await {
        Ok(Ok(peer)) => Ok((peer, start.elapsed())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 20 s".into()),
    }
}

/// A frozen home master, with and without active checks: every request
/// completes, once, within `first_byte_timeout` plus a second.
async fn frozen_home(checks: bool) -> Option<Duration> {
    let test = "frozen_home_master";
    if !require::tool(test, "openssl", "openssl") {
        return None;
    }
    let pki = Pki::new("hedge test CA").unwrap();
    let dir = common::process::temp_dir("hedge");
    let masters = tls_masters(&pki, &dir);
    let addrs: Vec<SocketAddr> = masters.iter().map(|m| m.addr).collect();
    let ca: PathBuf = dir.join("ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let fbt = Duration::from_secs(1);
    let mut cfg = TestConfig::new(&addrs)
        .node_id(&node_homed_at(&addrs, 0))
        .set("first_byte_timeout", "1s")
        .set("connect_timeout", "3s")
        .fail_timeout(Some("3s"))
        .each_upstream("max_fails", 1)
        .admin();
    if checks {
        // The figures: interval 2s, timeout 1s, fall 2.
        cfg = cfg.health_check(
            HealthCheck::https("/readyz", &ca)
                .server_name("kubernetes")
                .interval("2s")
                .timeout("1s")
                .fall(2)
                .rise(2),
        );
    }
    let proxy = Proxy::start(cfg.config()).await;
    let client = client_config(&pki);
    // The home answers while it runs.
    let (peer, _) = tls_get(proxy.addr, client.clone()).await.unwrap();
    assert_eq!(
        peer,
        masters[0].cert.chain[0].to_vec(),
        "not homed at master 0"
    );
    masters[0].signal(libc::SIGSTOP);
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let (peer, took) = tls_get(proxy.addr, client.clone())
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_ne!(
            peer,
            masters[0].cert.chain[0].to_vec(),
            "request {i} was answered by the frozen master"
        );
        worst = worst.max(took);
        println!("checks {checks}: request {i} took {took:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let scrape = proxy.scrape();
    let home = addrs[0].to_string();
    let answered = scrape.get(
        "cplb_hedges_total",
        &[("upstream", &home), ("result", "answered")],
    );
    println!(
        "checks {checks}: worst request {worst:?} with the home master frozen (bound {:?}); {answered} hedges answered",
        fbt + Duration::from_secs(1)
    );
    assert!(answered >= 1.0, "no hedge away from the frozen master");
    assert!(
        worst <= fbt + Duration::from_secs(1),
        "a request took {worst:?}"
    );
    proxy.shutdown().await;
    Some(worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_home_master_without_active_checks_cuts_nothing_off() {
    frozen_home(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_home_master_with_active_checks_cuts_nothing_off() {
    frozen_home(true).await;
}

/// A plain TCP master: reads the client's first bytes, waits `delay`, then
/// writes `<name>\n` and closes. Counts the connections it answered.
struct Master {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
}

async fn master(ip: IpAddr, port: u16, name: &'static str, delay: Duration) -> Master {
    let l = TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                tokio::time::sleep(delay).await;
                if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Master { addr, answered }
}

/// Masters on 127.0.0.2.. sharing a free port, each answering after its
/// delay.
async fn masters(delays: &[(&'static str, Duration)]) -> Vec<Master> {
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut out = Vec::new();
    for (i, (name, delay)) in delays.iter().enumerate() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
        out.push(master(ip, port, name, *delay).await);
    }
    out
}

/// Sends `hello` through `proxy` and reads until the connection closes.
async fn exchange(proxy: SocketAddr) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"hello\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A master that answers after the hedge fired never reaches the client:
/// one answer per connection, from the master the hedge went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_after_the_hedge_never_reaches_the_client() {
    let ms = masters(&[
        ("slow", Duration::from_millis(1500)),
        ("fast", Duration::ZERO),
    ])
    .await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let proxy = Proxy::start(
        TestConfig::new(&addrs)
            .node_id(&node_homed_at(&addrs, 0))
            .set("first_byte_timeout", "500ms")
            // One hedge marks it down for a minute: the second request goes
            // straight to the fast master.
            .each_upstream("max_fails", 1)
            .config(),
    )
    .await;
    let first = exchange(proxy.addr).await;
    assert_eq!(first, "fast\n", "one answer, from the master hedged to");
    let second = exchange(proxy.addr).await;
    assert_eq!(second, "fast\n");
    let s = proxy.scrape();
    let slow = addrs[0].to_string();
    assert_eq!(
        s.get(
            "cplb_hedges_total",
            &[("upstream", &slow), ("result", "answered")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

/// Once a byte came back, the connection is committed: a master that
/// answers at once and then goes quiet is never replayed elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_connection_is_never_replayed() {
    // "first" answers at once, then holds the connection (never closes).
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let first = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"partial").await;
                // Quiet far past first_byte_timeout, then done.
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    let other = masters(&[("other", Duration::ZERO)]).await;
    let addrs = [first, other[0].addr];
    let proxy = Proxy::start(
        TestConfig::new(&addrs)
            .node_id(&node_homed_at(&addrs, 0))
            .set("first_byte_timeout", "300ms")
            .config(),
    )
    .await;
    let got = exchange(proxy.addr).await;
    assert_eq!(got, "partial", "bytes from anywhere but the first master");
    assert_eq!(other[0].answered.load(Ordering::SeqCst), 0, "replayed");
    let s = proxy.scrape();
    assert_eq!(s.sum("cplb_hedges_total", &[]), 0.0);
    proxy.shutdown().await;
}

/// A client that sends nothing first (server speaks first) is never
/// hedged: nothing to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_never_hedged() {
    let ms = masters(&[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let proxy = Proxy::start(
        TestConfig::new(&addrs)
            .node_id(&node_homed_at(&addrs, 0))
            .set("first_byte_timeout", "200ms")
            .config(),
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    // Past the timeout with nothing sent, then the request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.write_all(b"late\n").await.unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "a\n", "went elsewhere than its home");
    assert_eq!(proxy.scrape().sum("cplb_hedges_total", &[]), 0.0);
    proxy.shutdown().await;
}

/// Every master slow: hedges stay within the budget (10% of the attempts
/// of the last 10 s, at least 3), the rest are counted as skipped, and
/// every connection still completes on its first choice or its hedge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_when_every_master_is_slow() {
    let slow = Duration::from_millis(1200);
    let ms = masters(&[("a", slow), ("b", slow), ("c", slow)]).await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let proxy = Proxy::start(
        TestConfig::new(&addrs)
            .hash_key("connection")
            .set("first_byte_timeout", "400ms")
            // A hedge is a passive failure: keep every master usable.
            .each_upstream("max_fails", 0)
            .config(),
    )
    .await;
    const N: usize = 40;
    let tasks: Vec<_> = (0..N).map(|_| tokio::spawn(exchange(proxy.addr))).collect();
    let mut answered = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert!(
            ["a\n", "b\n", "c\n"].contains(&got.as_str()),
            "a connection ended with {got:?}"
        );
        answered += 1;
    }
    let s = proxy.scrape();
    let hedged = s.sum("cplb_hedges_total", &[("result", "answered")])
        + s.sum("cplb_hedges_total", &[("result", "failed")]);
    let skipped = s.sum("cplb_hedges_total", &[("result", "skipped")]);
    let budget = (N / 10).max(3) as f64;
    println!("{answered} of {N} answered; {hedged} hedges (budget {budget}), {skipped} skipped");
    assert!(hedged >= 1.0, "no hedge at all");
    assert!(
        hedged <= budget,
        "{hedged} hedges, over the budget of {budget}"
    );
    assert!(skipped >= N as f64 - budget, "{skipped} skipped");
    proxy.shutdown().await;
}

/// A hedge counts as a passive failure: with `max_fails: 2`, a frozen home
/// is hedged away from twice, then no longer chosen within `fail_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_master_stops_being_chosen_after_max_fails_hedges() {
    let ms = masters(&[
        ("silent", Duration::from_secs(3600)),
        ("fine", Duration::ZERO),
    ])
    .await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let proxy = Proxy::start(
        TestConfig::new(&addrs)
            .node_id(&node_homed_at(&addrs, 0))
            .set("first_byte_timeout", "300ms")
            .each_upstream("max_fails", 2)
            .config(),
    )
    .await;
    let mut slow = 0;
    for _ in 0..6 {
        let start = Instant::now();
        assert_eq!(exchange(proxy.addr).await, "fine\n");
        if start.elapsed() >= Duration::from_millis(300) {
            slow += 1;
        }
    }
    let s = proxy.scrape();
    let silent = addrs[0].to_string();
    let hedges = s.get(
        "cplb_hedges_total",
        &[("upstream", &silent), ("result", "answered")],
    );
    println!("{hedges} hedges, {slow} of 6 requests waited for one");
    assert_eq!(hedges, 2.0, "hedged away from it more than max_fails times");
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &silent)]),
        0.0,
        "not marked down"
    );
    proxy.shutdown().await;
}
