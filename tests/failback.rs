//! Fail-back on real sockets (issue 12): three stand-in masters that
//! announce their name, several cplb processes with distinct node ids
//! (`hash.key: node`), each with a few long-lived client connections that
//! reconnect whenever cplb closes them. A master stops: its nodes'
//! connections move and count as displaced. It comes back: they come home
//! within settle + spread + slack, at most `max_per_second` closes per node
//! in any second, with one log line per episode start and end. A flapping
//! home moves nothing; `enabled: false` moves nothing.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::metrics::Scrape;
use common::process::{CplbProcess, Options};
use common::*;
use cplb::ring::{Ring, hash_key};
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

const CONNS: usize = 4;
const RATE: usize = 2;

/// One close of a client connection by cplb, seen by the client.
#[derive(Debug, Clone)]
struct Close {
    node: usize,
    at: Instant,
    from: String,
}

#[derive(Default)]
struct Log {
    /// The master each slot is connected to now ("" while reconnecting).
    current: Vec<String>,
    /// The node of each slot.
    node_of: Vec<usize>,
    closes: Vec<Close>,
}

struct Node {
    id: String,
    /// Index of its home master.
    home: usize,
    p: CplbProcess,
}

/// Fields drop in order: the clients stop before the proxies do.
struct Cluster {
    clients: JoinSet<()>,
    masters: Vec<Option<FakeUpstream>>,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Node>,
    log: Arc<Mutex<Log>>,
}

fn name(i: usize) -> String {
    format!("m{i}")
}

/// `want_victim` node ids whose home is master 0, then `want_other` whose
/// home is another one, from the ring as cplb builds it.
fn pick_nodes(addrs: &[SocketAddr], want_victim: usize, want_other: usize) -> Vec<(String, usize)> {
    let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ring = Ring::new(texts.iter().map(|s| (s.as_str(), 1))).unwrap();
    let (mut victim, mut other) = (Vec::new(), Vec::new());
    for i in 0..10_000 {
        let id = format!("node-{i}");
        let home = ring.first(hash_key(id.as_bytes())).unwrap();
        if home == 0 && victim.len() < want_victim {
            victim.push((id, home));
        } else if home != 0 && other.len() < want_other {
            other.push((id, home));
        }
        if victim.len() == want_victim && other.len() == want_other {
            break;
        }
    }
    victim.extend(other);
    victim
}

/// A fast TCP check (rise 1, fall 1) and the given `failback:` lines.
fn node_yaml(addrs: &[SocketAddr], id: &str, failback: &str) -> String {
    TestConfig::new(addrs)
        .node_id(id)
        .workers(1)
        .admin()
        .health_check(
            HealthCheck::tcp()
                .interval("100ms")
                .timeout("300ms")
                .rise(1)
                .fall(1),
        )
        .section(&format!("failback:\n{failback}"))
        .yaml()
}

impl Cluster {
    async fn start(victims: usize, others: usize, failback: &str) -> Cluster {
        let mut masters = Vec::new();
        for i in 0..3 {
            masters.push(Some(FakeUpstream::start(&name(i)).await));
        }
        let addrs: Vec<SocketAddr> = masters.iter().map(|m| m.as_ref().unwrap().addr).collect();
        let nodes: Vec<Node> = pick_nodes(&addrs, victims, others)
            .into_iter()
            .map(|(id, home)| Node {
                p: CplbProcess::spawn(&node_yaml(&addrs, &id, failback), Options::default()),
                id,
                home,
            })
            .collect();
        let log = Arc::new(Mutex::new(Log::default()));
        let mut clients = JoinSet::new();
        for (n, node) in nodes.iter().enumerate() {
            for _ in 0..CONNS {
                let slot = {
                    let mut l = log.lock().unwrap();
                    l.current.push(String::new());
                    l.node_of.push(n);
                    l.current.len() - 1
                };
                clients.spawn(hold(node.p.addr, n, slot, log.clone()));
            }
        }
        let c = Cluster {
            clients,
            masters,
            addrs,
            nodes,
            log,
        };
        c.wait_placed("every connection on its home", |node, m| {
            m == name(node.home)
        })
        .await;
        c
    }

    /// Waits until every slot of every node is connected where `ok` says.
    async fn wait_placed(&self, what: &str, ok: impl Fn(&Node, &str) -> bool) -> Duration {
        self.wait_placed_within(what, DEADLINE, ok).await
    }

    async fn wait_placed_within(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&Node, &str) -> bool,
    ) -> Duration {
        let t = Instant::now();
        let placed = || {
            let l = self.log.lock().unwrap();
            l.current
                .iter()
                .zip(&l.node_of)
                .all(|(m, &n)| !m.is_empty() && ok(&self.nodes[n], m))
        };
        if eventually(limit, async || placed().then_some(()))
            .await
            .is_err()
        {
            let l = self.log.lock().unwrap();
            panic!(
                "timed out ({limit:?}) waiting for: {what}\nslots: {:?}\n{}",
                l.current,
                self.all_logs()
            );
        }
        t.elapsed()
    }

    fn all_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.id, n.p.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn scrape(&self, n: usize) -> Scrape {
        let (_, _, body) = http(self.nodes[n].p.admin.unwrap(), "GET", "/metrics").await;
        Scrape::parse(&body)
    }

    fn victim(&self) -> String {
        self.addrs[0].to_string()
    }

    async fn displaced(&self, n: usize) -> f64 {
        self.scrape(n).await.get(
            "cplb_connections_displaced",
            &[("upstream", &self.victim())],
        )
    }

    async fn failback_closes(&self, n: usize) -> f64 {
        self.scrape(n)
            .await
            .sum("cplb_connections_closed_total", &[("reason", "failback")])
    }

    /// Waits until every node's cplb has master 0 as `up` (1) or not (0).
    async fn wait_victim_up(&self, up: bool) {
        let want = if up { 1.0 } else { 0.0 };
        let r = eventually(DEADLINE, async || {
            for n in 0..self.nodes.len() {
                let s = self.scrape(n).await;
                if s.get("cplb_upstream_up", &[("upstream", &self.victim())]) != want {
                    return None;
                }
            }
            Some(())
        })
        .await;
        r.unwrap_or_else(|_| panic!("master 0 up={up} on every node\n{}", self.all_logs()));
    }

    async fn stop_victim(&mut self) {
        if let Some(m) = self.masters[0].take() {
            m.stop().await;
        }
    }

    async fn start_victim(&mut self) {
        self.masters[0] = Some(FakeUpstream::start_at(&name(0), self.addrs[0]).await);
    }

    /// Master 0 stops; waits until its nodes' connections run elsewhere and
    /// count as displaced from it.
    async fn victim_dies(&mut self) {
        self.stop_victim().await;
        self.wait_placed("connections of master 0's nodes moved", |_, m| m != name(0))
            .await;
        let r = eventually(DEADLINE, async || {
            for (n, node) in self.nodes.iter().enumerate() {
                let want = if node.home == 0 { CONNS as f64 } else { 0.0 };
                if self.displaced(n).await != want {
                    return None;
                }
            }
            Some(())
        })
        .await;
        r.unwrap_or_else(|_| panic!("displaced gauges\n{}", self.all_logs()));
    }

    fn closes_since(&self, t: Instant) -> Vec<Close> {
        let l = self.log.lock().unwrap();
        l.closes.iter().filter(|c| c.at >= t).cloned().collect()
    }
}

/// One long-lived client: connects through `proxy`, notes where it landed,
/// waits until cplb closes it, notes the close, and reconnects.
async fn hold(proxy: SocketAddr, node: usize, slot: usize, log: Arc<Mutex<Log>>) {
    loop {
        let Some(mut c) = Client::connect_from(None, proxy).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        log.lock().unwrap().current[slot] = c.upstream.clone();
        // The masters echo and never speak first: this returns at EOF.
        let mut line = String::new();
        let _ = c.reader.read_line(&mut line).await;
        let mut l = log.lock().unwrap();
        l.current[slot] = String::new();
        l.closes.push(Close {
            node,
            at: Instant::now(),
            from: c.upstream,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displaced_connections_come_home_at_the_bounded_rate() {
    let (settle, spread) = (Duration::from_secs(1), Duration::from_secs(2));
    let mut c = Cluster::start(3, 1, "  settle: 1s\n  spread: 2s\n  max_per_second: 2\n").await;
    // Present at 0 from start-up, for every upstream.
    let s = c.scrape(0).await;
    for a in &c.addrs {
        let up = a.to_string();
        let closed = [("upstream", up.as_str()), ("reason", "failback")];
        assert_eq!(s.find("cplb_connections_closed_total", &closed), Some(0.0));
        assert_eq!(
            s.find("cplb_connections_displaced", &[("upstream", &up)]),
            Some(0.0)
        );
    }

    c.victim_dies().await;
    let entry = common::upstream_entry(c.nodes[0].p.admin.unwrap(), &c.victim()).await;
    assert_eq!(entry["displaced_connections"], CONNS, "{entry:#}");
    // `cplb status` shows them beside the (stopped) home's connections.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args([
            "status",
            "--admin",
            &c.nodes[0].p.admin.unwrap().to_string(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with(&c.victim()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&format!("0 (+{CONNS} displaced)")), "{table}");
    for n in &c.nodes {
        assert_eq!(n.p.count_logs("fail-back episode started"), 0);
    }

    c.start_victim().await;
    let back = Instant::now();
    // settle + spread, the node's last closes (CONNS / RATE s), detection
    // and slack.
    let limit = settle + spread + Duration::from_secs((CONNS / RATE) as u64 + 5);
    let took = c
        .wait_placed_within("every connection home again", limit, |node, m| {
            m == name(node.home)
        })
        .await;
    println!(
        "all {} displaced connections home {:.2}s after master 0 restarted (settle {settle:?} + spread {spread:?})",
        3 * CONNS,
        took.as_secs_f64()
    );

    let closes = c.closes_since(back);
    for (n, node) in c.nodes.iter().enumerate() {
        let mut times: Vec<Instant> = closes
            .iter()
            .filter(|x| x.node == n)
            .map(|x| x.at)
            .collect();
        times.sort();
        let want = if node.home == 0 { CONNS } else { 0 };
        assert_eq!(times.len(), want, "{}: closes after the restart", node.id);
        assert!(
            closes
                .iter()
                .filter(|x| x.node == n)
                .all(|x| x.from != name(node.home))
        );
        let offsets: Vec<String> = times
            .iter()
            .map(|t| format!("{:.3}", (*t - back).as_secs_f64()))
            .collect();
        // Any RATE + 1 consecutive closes span at least a second; 50 ms
        // for the client's own view of the close times.
        let min_span = times.windows(RATE + 1).map(|w| w[RATE] - w[0]).min();
        println!(
            "{} (home m{}): closes at {offsets:?} s after the restart; shortest span of {} closes: {min_span:?}",
            node.id,
            node.home,
            RATE + 1
        );
        if let Some(span) = min_span {
            assert!(
                span >= Duration::from_millis(950),
                "{}: {} closes within {span:?}: more than max_per_second={RATE} in one second",
                node.id,
                RATE + 1
            );
        }
        assert_eq!(c.failback_closes(n).await, want as f64, "{}", node.id);
    }

    // One line per episode start and end, with the counts; none per connection.
    for node in c.nodes.iter_mut() {
        if node.home != 0 {
            assert_eq!(node.p.count_logs("fail-back episode"), 0, "{}", node.id);
            continue;
        }
        node.p.wait_for_count("fail-back episode ended", 1);
        let started = node.p.wait_for_log("fail-back episode started");
        let ended = node.p.wait_for_log("fail-back episode ended");
        println!("{started}\n{ended}");
        assert_eq!(node.p.count_logs("fail-back episode started"), 1);
        assert_eq!(node.p.count_logs("fail-back episode ended"), 1);
        assert!(started.contains(&format!("displaced={CONNS}")), "{started}");
        assert!(started.contains("delay_ms="), "{started}");
        assert!(ended.contains(&format!("closed={CONNS}")), "{ended}");
        assert!(ended.contains("no displaced connection left"), "{ended}");
    }
    for n in 0..c.nodes.len() {
        assert_eq!(c.displaced(n).await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_closed_while_home_flaps() {
    // Each up phase (about 600 ms, plus detection) is well short of settle.
    let mut c = Cluster::start(2, 1, "  settle: 2s\n  spread: 1s\n  max_per_second: 2\n").await;
    c.victim_dies().await;
    let flapping = Instant::now();
    for _ in 0..4 {
        c.start_victim().await;
        c.wait_victim_up(true).await;
        // Deliberate: how long home stays up in this flap, not a wait for readiness.
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.stop_victim().await;
        c.wait_victim_up(false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closes = c.closes_since(flapping);
    assert!(closes.is_empty(), "closed while home flapped: {closes:?}");
    for (n, node) in c.nodes.iter().enumerate() {
        assert_eq!(c.failback_closes(n).await, 0.0, "{}", node.id);
        let want = if node.home == 0 { CONNS as f64 } else { 0.0 };
        assert_eq!(c.displaced(n).await, want, "{}", node.id);
        assert_eq!(node.p.count_logs("fail-back episode"), 0, "{}", node.id);
    }
    println!(
        "4 flaps in {:.1}s: nothing closed",
        flapping.elapsed().as_secs_f64()
    );

    // Home stays up: now they do come home (the flaps were what held them).
    c.start_victim().await;
    let took = c
        .wait_placed_within(
            "every connection home after the flapping",
            Duration::from_secs(15),
            |node, m| m == name(node.home),
        )
        .await;
    println!("home {:.2}s after the last return", took.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_failback_closes_nothing() {
    let mut c = Cluster::start(
        2,
        0,
        "  enabled: false\n  settle: 200ms\n  spread: 200ms\n  max_per_second: 2\n",
    )
    .await;
    c.victim_dies().await;
    c.start_victim().await;
    c.wait_victim_up(true).await;
    let back = Instant::now();
    // Deliberate: enabled, this window would have moved every connection
    // (settle + spread + CONNS / RATE = 2.4 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closes = c.closes_since(back);
    assert!(closes.is_empty(), "closed with fail-back off: {closes:?}");
    for (n, node) in c.nodes.iter().enumerate() {
        assert_eq!(c.failback_closes(n).await, 0.0, "{}", node.id);
        // The gauge still counts them.
        assert_eq!(c.displaced(n).await, CONNS as f64, "{}", node.id);
        assert_eq!(node.p.count_logs("fail-back episode"), 0, "{}", node.id);
    }
    c.clients.abort_all();
}

/// Writes a node's config whole and renames it into place: the watcher
/// never sees half a file.
fn rewrite(p: &CplbProcess, yaml: &str) {
    let tmp = p.config_path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &p.config_path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_home_displaces_nothing() {
    let fb = "  settle: 1s\n  spread: 1s\n  max_per_second: 2\n";
    let mut c = Cluster::start(1, 0, fb).await;
    c.victim_dies().await;
    let id = c.nodes[0].id.clone();
    // A reload removes the home: its displaced connections stay where
    // they are, no longer displaced, and its series go.
    rewrite(&c.nodes[0].p, &node_yaml(&c.addrs[1..], &id, fb));
    let victim = c.victim();
    let gone = eventually(DEADLINE, async || {
        let s = c.scrape(0).await;
        s.find("cplb_connections_displaced", &[("upstream", &victim)])
            .is_none()
            .then_some(())
    })
    .await;
    gone.unwrap_or_else(|_| panic!("home's series removed\n{}", c.all_logs()));

    // It returns, same address, in a new reload: a new upstream. The old
    // connections are not its displaced ones, so nothing moves.
    c.start_victim().await;
    rewrite(&c.nodes[0].p, &node_yaml(&c.addrs, &id, fb));
    // New connections of this node go to the returned home.
    let proxy = c.nodes[0].p.addr;
    let home = eventually(DEADLINE, async || {
        let fresh = Client::connect(proxy).await;
        (fresh.upstream == name(0)).then_some(())
    })
    .await;
    home.unwrap_or_else(|_| panic!("new connections go home\n{}", c.all_logs()));
    let back = Instant::now();
    assert_eq!(c.displaced(0).await, 0.0);
    // Deliberate: were they displaced, settle + spread + CONNS / RATE (4 s)
    // would have moved them all.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let closes = c.closes_since(back);
    assert!(
        closes.is_empty(),
        "closed after home was removed: {closes:?}"
    );
    assert_eq!(c.failback_closes(0).await, 0.0);
    assert_eq!(c.nodes[0].p.count_logs("fail-back episode"), 0);
}
