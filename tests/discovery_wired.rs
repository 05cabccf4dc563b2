//! Discovery wired into the proxy, against stand-in masters over real TLS
//! on 127.0.0.2 and up (sharing one port, as real masters share 6443):
//! cplb starts from one seed and learns the rest, follows the API, drains
//! removed masters and closes their connections after `remove_after`,
//! survives flaps, empty lists, API failures, a corrupt state file and a
//! kubeconfig that points at itself, and restarts from its state file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::cluster::{Auth, Cluster};
use common::process::{CplbProcess, Options};
use common::{Proxy, TestConfig, http, wait_until};
use cplb::config::Config;
use cplb::standin::client::ApiClient;
use cplb::standin::endpoints::Master;
use serde_json::Value;

/// The `discovery:` section for `kubeconfig`, state file `state`.
fn discovery(kubeconfig: &Path, state: &Path, remove_after: &str) -> String {
    format!(
        "discovery:\n  kubeconfig: {}\n  state_file: {}\n  remove_after: {remove_after}\n  upstream:\n    fail_timeout: 60s\n",
        kubeconfig.display(),
        state.display()
    )
}

/// A proxy on 127.0.0.1:0 with an admin listener, seeds `seeds`, and
/// `extra` (a discovery section, the hash key...).
fn yaml(seeds: &[SocketAddr], extra: &str) -> String {
    TestConfig::new(seeds).admin().section(extra).yaml()
}

async fn start(yaml: &str, dir: &Path) -> Proxy {
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, yaml).unwrap();
    Proxy::start(Config::load(&path).unwrap_or_else(|e| panic!("{e}"))).await
}

/// `/upstreams`, as JSON.
async fn upstreams(p: &Proxy) -> Vec<Value> {
    admin_upstreams(p.admin.unwrap()).await
}

/// `/upstreams` at `admin` (an in-process proxy's or a process's).
async fn admin_upstreams(admin: SocketAddr) -> Vec<Value> {
    let (status, body) = common::get_off_runtime(admin, "/upstreams").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// (address, source, draining) of every upstream, sorted by address.
async fn set(p: &Proxy) -> Vec<(String, String, bool)> {
    admin_set(p.admin.unwrap()).await
}

async fn wait_set(p: &Proxy, want: &[(String, &str, bool)]) {
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(a, s, d)| (a.clone(), s.to_string(), *d))
        .collect();
    let end = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let got = set(p).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out: upstreams are {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn a(c: &Cluster, i: usize) -> String {
    c.addr(i).to_string()
}

/// An HTTPS connection through the proxy and the master's name behind it.
async fn through(p: &Proxy, c: &Cluster) -> (ApiClient, String) {
    let mut client = ApiClient::connect(p.addr, &c.pki, None).await.unwrap();
    let (status, body) = client.get("/whoami").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let name = body.split_whitespace().next().unwrap_or("").to_string();
    (client, name)
}

/// A connection that landed on `name` (with `hash.key: connection`, each
/// connection hashes differently).
async fn through_to(p: &Proxy, c: &Cluster, name: &str) -> ApiClient {
    for _ in 0..200 {
        let (client, got) = through(p, c).await;
        if got == name {
            return client;
        }
    }
    panic!("no connection reached {name}");
}

fn state_addresses(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut out: Vec<String> = v["addresses"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn closed_server() -> String {
    format!("https://{}", common::refused_addr())
}

struct Setup {
    c: Cluster,
    dir: PathBuf,
    state: PathBuf,
}

async fn setup(n: usize, listed: &[usize]) -> Setup {
    let c = Cluster::start(n).await;
    c.list(listed);
    let dir = c.dir.join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("upstreams.json");
    Setup { c, dir, state }
}

#[tokio::test]
async fn starts_with_one_seed_and_learns_the_rest() {
    let mut s = setup(3, &[0, 1, 2]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m")), &s.dir).await;
    let m = p.scrape();
    // Known labels exist from the start, at 0.
    assert_eq!(m.get("cplb_upstreams", &[("source", "static")]), 1.0);
    assert_eq!(m.get("cplb_upstreams", &[("source", "state")]), 0.0);
    assert_eq!(
        m.get("cplb_discovery_errors_total", &[("reason", "empty")]),
        0.0
    );
    assert_eq!(
        m.get("cplb_discovery_state_file_write_failures_total", &[]),
        0.0
    );
    wait_set(
        &p,
        &[
            (a(c, 0), "api", false),
            (a(c, 1), "api", false),
            (a(c, 2), "api", false),
        ],
    )
    .await;
    let m = p.scrape();
    assert_eq!(m.get("cplb_upstreams", &[("source", "api")]), 3.0);
    assert_eq!(m.get("cplb_upstreams", &[("source", "static")]), 0.0);
    assert!(m.get("cplb_discovery_watch_events_total", &[]) >= 1.0);
    assert!(m.get("cplb_discovery_last_sync_timestamp_seconds", &[]) > 1.0e9);
    wait_until("the state file lists the three masters", || {
        state_addresses(&s.state) == vec![a(c, 0), a(c, 1), a(c, 2)]
    })
    .await;
    // The seed is gone: connections reach the learned masters.
    s.c.masters[0].stop().await;
    let (_conn, name) = through(&p, &s.c).await;
    assert!(name == "master-2" || name == "master-3", "{name}");
    p.shutdown().await;
}

#[tokio::test]
async fn follows_additions_and_a_removal_drains_then_closes() {
    let s = setup(3, &[0, 1]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let extra = format!(
        "hash:\n  key: connection\n{}",
        discovery(&kc, &s.state, "2s")
    );
    let p = start(&yaml(&[c.addr(0)], &extra), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    // An addition applies at once.
    c.list(&[0, 1, 2]);
    wait_set(
        &p,
        &[
            (a(c, 0), "api", false),
            (a(c, 1), "api", false),
            (a(c, 2), "api", false),
        ],
    )
    .await;
    let mut kept = through_to(&p, c, "master-2").await;
    c.list(&[0, 2]);
    wait_set(
        &p,
        &[
            (a(c, 0), "api", false),
            (a(c, 1), "api", true),
            (a(c, 2), "api", false),
        ],
    )
    .await;
    let drained_at = std::time::Instant::now();
    // /status (what `cplb status` prints) says so too.
    let (_, _, body) = http(p.admin.unwrap(), "GET", "/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    let gone = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == a(c, 1))
        .unwrap();
    assert_eq!(
        (&gone["source"], &gone["draining"]),
        (&Value::from("api"), &Value::from(true)),
        "{body}"
    );
    // Its open connection continues; new ones go elsewhere.
    let (status, body) = kept.get("/whoami").await.unwrap();
    assert_eq!(
        (status, body.split_whitespace().next()),
        (200, Some("master-2"))
    );
    for _ in 0..20 {
        let (_c, name) = through(&p, c).await;
        assert_ne!(name, "master-2", "a draining master got a new connection");
    }
    // After remove_after it is removed and its connection closed.
    tokio::time::timeout(common::DEADLINE, kept.closed())
        .await
        .expect("the connection to the removed master is closed");
    let closed_after = drained_at.elapsed();
    eprintln!("closed {closed_after:?} after draining began (remove_after 2s)");
    assert!(closed_after >= std::time::Duration::from_millis(1500));
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 2), "api", false)]).await;
    wait_until("the state file follows", || {
        state_addresses(&s.state) == vec![a(c, 0), a(c, 2)]
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_flap_within_remove_after_causes_no_churn() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let extra = format!(
        "hash:\n  key: connection\n{}",
        discovery(&kc, &s.state, "1m")
    );
    let p = start(&yaml(&[c.addr(0)], &extra), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    let mut kept = through_to(&p, c, "master-2").await;
    let total = |p: &Proxy| {
        p.scrape()
            .get("cplb_connections_total", &[("upstream", &a(c, 1))])
    };
    let before = total(&p);
    c.list(&[0]);
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", true)]).await;
    c.list(&[0, 1]);
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    // Same connection, same upstream state (its counters kept).
    assert!(!kept.is_closed());
    let (status, body) = kept.get("/whoami").await.unwrap();
    assert_eq!(
        (status, body.split_whitespace().next()),
        (200, Some("master-2"))
    );
    assert_eq!(total(&p), before, "the upstream's counters were reset");
    p.shutdown().await;
}

#[tokio::test]
async fn an_empty_list_is_refused_and_the_set_stays() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "1s")), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    c.store.set_masters(&[]);
    wait_until("the empty list is refused", || {
        p.scrape()
            .get("cplb_discovery_errors_total", &[("reason", "empty")])
            >= 1.0
    })
    .await;
    // Longer than remove_after: nothing drained or removed.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        set(&p).await,
        vec![
            (a(c, 0), "api".into(), false),
            (a(c, 1), "api".into(), false)
        ]
    );
    assert_eq!(state_addresses(&s.state), vec![a(c, 0), a(c, 1)]);
    p.shutdown().await;
}

#[tokio::test]
async fn with_the_api_failing_cplb_keeps_serving() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "1s")), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    // The API answers 500 on every master; their TCP ports still work.
    c.store.set_api_down(true);
    wait_until("discovery fails on every master", || {
        p.scrape()
            .get("cplb_discovery_errors_total", &[("reason", "api")])
            >= 2.0
    })
    .await;
    // Longer than remove_after: nothing drains.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, _, body) = http(p.admin.unwrap(), "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    for u in upstreams(&p).await {
        assert_eq!(
            u["state"], "up",
            "discovery failures marked an upstream down: {u}"
        );
        assert_eq!(u["draining"], false);
    }
    let (_conn, name) = through(&p, c).await;
    assert!(name.starts_with("master-"), "{name}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_restart_with_the_api_unreachable_uses_the_state_file() {
    let s = setup(3, &[1, 2]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    // First run: learns masters 2 and 3, which are not in the seed.
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m")), &s.dir).await;
    wait_until("the state file is written", || {
        state_addresses(&s.state) == vec![a(c, 1), a(c, 2)]
    })
    .await;
    p.shutdown().await;
    // Second run: the API is unreachable (its CA is not trusted any more)
    // and the seed is a master that is gone for good.
    let other = cplb::standin::pki::Pki::new("another CA").unwrap();
    let bad = c.kubeconfig_with(
        "wrong-ca",
        &closed_server(),
        &other.ca_pem(),
        Auth::ClientCert,
    );
    let seed = common::refused_addr();
    let p = start(&yaml(&[seed], &discovery(&bad, &s.state, "5m")), &s.dir).await;
    assert_eq!(
        set(&p).await,
        vec![
            (a(c, 1), "state".into(), false),
            (a(c, 2), "state".into(), false)
        ]
    );
    assert_eq!(
        p.scrape().get("cplb_upstreams", &[("source", "state")]),
        2.0
    );
    let (_conn, name) = through(&p, c).await;
    assert!(name == "master-2" || name == "master-3", "{name}");
    wait_until("discovery's TLS failure is counted", || {
        p.scrape()
            .get("cplb_discovery_errors_total", &[("reason", "tls")])
            >= 1.0
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_survived() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    std::fs::write(&s.state, "{\"service\": \"default/kubernetes\", \"addr").unwrap();
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m")), &s.dir).await;
    assert_eq!(set(&p).await, vec![(a(c, 0), "static".into(), false)]);
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    wait_until("a valid state file replaces the corrupt one", || {
        state_addresses(&s.state) == vec![a(c, 0), a(c, 1)]
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_state_file_write_failure_is_counted_and_the_set_applied() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    // A directory where the file should be: rename onto it fails.
    std::fs::create_dir_all(&s.state).unwrap();
    std::fs::write(s.state.join("keep"), "x").unwrap();
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m")), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    wait_until("the failed write is counted", || {
        p.scrape()
            .get("cplb_discovery_state_file_write_failures_total", &[])
            >= 1.0
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_kubeconfig_pointing_at_the_proxy_itself_does_not_deadlock() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    // The proxy's own listen address, as on a node whose kubelet.conf
    // names the local proxy.
    let own = common::refused_addr();
    let kc = c.kubeconfig("self", &format!("https://{own}"), Auth::ClientCert);
    let off = TestConfig::new(&[c.addr(0)])
        .admin()
        .set("max_connections", 1)
        .set("listen", own)
        .yaml();
    let p = start(&off, &s.dir).await;
    assert_eq!(p.addr, own);
    // The local listener is saturated: one client holds the only slot, so
    // anything dialling the proxy now is turned away.
    let (_held, _) = through(&p, c).await;
    let on = format!("{off}{}", discovery(&kc, &s.state, "5m"));
    std::fs::write(s.dir.join("cplb.yaml"), &on).unwrap();
    p.reload.reload().await.unwrap();
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    assert!(
        p.scrape().get(
            "cplb_client_connections_rejected_total",
            &[("reason", "max_connections")]
        ) == 0.0,
        "discovery dialled the proxy itself"
    );
    p.shutdown().await;
}

// Multi-threaded: the stand-in masters must answer while this test blocks
// reading the child's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_error_and_the_static_list_keeps_serving() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    let other = cplb::standin::pki::Pki::new("another CA").unwrap();
    let kc = c.kubeconfig_with(
        "wrong-ca",
        &closed_server(),
        &other.ca_pem(),
        Auth::ClientCert,
    );
    let y = yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m"));
    let mut proc = CplbProcess::spawn(&y, Options::default());
    let line = proc.wait_for_log("discovery failed");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains(&a(c, 0)), "names the master: {line}");
    // One warning from cplb, not kube's own error line per request.
    assert_eq!(proc.count_logs("kube_client"), 0, "{}", proc.logs());
    let admin = proc.admin.unwrap();
    let (status, _, body) = http(admin, "GET", "/upstreams").await;
    assert_eq!(status, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["source"], "static");
    let (status, _, _) = http(admin, "GET", "/readyz").await;
    assert_eq!(status, 200);
    let mut client = ApiClient::connect(proc.addr, &c.pki, None).await.unwrap();
    let (status, body) = client.get("/whoami").await.unwrap();
    assert_eq!(
        (status, body.split_whitespace().next()),
        (200, Some("master-1"))
    );
}

#[tokio::test]
async fn token_auth_works() {
    let s = setup(2, &[0, 1]).await;
    let c = &s.c;
    let kc = c.kubeconfig("token", &closed_server(), Auth::Token);
    let p = start(&yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m")), &s.dir).await;
    wait_set(&p, &[(a(c, 0), "api", false), (a(c, 1), "api", false)]).await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_reload_turns_discovery_on_and_off() {
    let s = setup(3, &[0, 1, 2]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let off = yaml(&[c.addr(0)], "");
    let on = yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m"));
    let p = start(&off, &s.dir).await;
    assert_eq!(set(&p).await, vec![(a(c, 0), "static".into(), false)]);
    std::fs::write(s.dir.join("cplb.yaml"), &on).unwrap();
    p.reload.reload().await.unwrap();
    wait_set(
        &p,
        &[
            (a(c, 0), "api", false),
            (a(c, 1), "api", false),
            (a(c, 2), "api", false),
        ],
    )
    .await;
    std::fs::write(s.dir.join("cplb.yaml"), &off).unwrap();
    p.reload.reload().await.unwrap();
    assert_eq!(set(&p).await, vec![(a(c, 0), "static".into(), false)]);
    // Off means off: the API's changes are no longer followed.
    c.list(&[1]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(set(&p).await, vec![(a(c, 0), "static".into(), false)]);
    p.shutdown().await;
}

/// `/upstreams` at `admin` as (address, source, draining), sorted.
async fn admin_set(admin: SocketAddr) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = admin_upstreams(admin)
        .await
        .iter()
        .map(|u| {
            (
                u["address"].as_str().unwrap().to_string(),
                u["source"].as_str().unwrap().to_string(),
                u["draining"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// One sample of a `cplb` process's `/metrics`.
async fn proc_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = common::get_off_runtime(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    common::metrics::Scrape::parse(&body).get(name, labels)
}

/// Polls `/upstreams` of a process until `cond` holds; the last set.
async fn proc_wait(
    proc: &CplbProcess,
    what: &str,
    cond: impl Fn(&[(String, String, bool)]) -> bool,
) -> Vec<(String, String, bool)> {
    let admin = proc.admin.unwrap();
    let mut last = Vec::new();
    let got = common::eventually(common::DEADLINE, async || {
        last = admin_set(admin).await;
        cond(&last).then(|| last.clone())
    })
    .await;
    got.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}; upstreams: {} {:?}...\n{}",
            last.len(),
            &last[..last.len().min(5)],
            proc.logs()
        )
    })
}

/// `n` ready endpoints on 127.`net`.x.y at `port`: addresses nobody
/// serves (nothing dials them here; they only fill the Service).
fn fillers(net: u8, n: usize, port: u16) -> Vec<Master> {
    (0..n)
        .map(|i| Master {
            addr: SocketAddr::new(
                std::net::Ipv4Addr::new(127, net, (i / 200) as u8, (i % 200 + 1) as u8).into(),
                port,
            ),
            ready: true,
        })
        .collect()
}

// Multi-threaded: the stand-in masters answer while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_upstreams_than_the_ring_holds_are_capped_and_discovery_keeps_applying() {
    let s = setup(2, &[0]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let y = yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m"));
    let proc = CplbProcess::spawn(&y, Options::default());
    let admin = proc.admin.unwrap();
    let master = |i: usize| Master {
        addr: c.addr(i),
        ready: true,
    };
    proc_wait(&proc, "the API's one master", |v| {
        v == [(a(c, 0), "api".to_string(), false)]
    })
    .await;
    // 100 listed, then 100 others: 100 listed and 99 draining, past 128.
    let mut first = fillers(10, 99, c.port);
    first.push(master(0));
    c.store.set_masters(&first);
    proc_wait(&proc, "100 upstreams", |v| v.len() == 100).await;
    let mut second = fillers(11, 99, c.port);
    second.push(master(0));
    c.store.set_masters(&second);
    let got = proc_wait(&proc, "the set capped at 128", |v| {
        v.len() == 128 && v.iter().any(|u| u.0.starts_with("127.11."))
    })
    .await;
    let listed = got.iter().filter(|u| !u.2).count();
    assert_eq!(listed, 100, "every listed upstream is kept");
    assert_eq!(
        proc_metric(admin, "cplb_discovery_endpoints_dropped", &[]).await,
        71.0
    );
    // More ready endpoints than the ring holds, all listed at once.
    let mut big = fillers(12, 200, c.port);
    big.push(master(0));
    c.store.set_masters(&big);
    let got = proc_wait(&proc, "the first 128 listed in address order", |v| {
        v.iter().filter(|u| !u.2).count() == 128
    })
    .await;
    assert_eq!(got.len(), 128, "{:?}", &got[..3]);
    assert!(
        got.contains(&(a(c, 0), "api".into(), false)),
        "127.0.0.x sorts first"
    );
    // The reloader is alive: a later list still applies.
    c.list(&[0, 1]);
    let got = proc_wait(&proc, "the second master listed", |v| {
        v.contains(&(a(c, 1), "api".into(), false))
    })
    .await;
    let dropped = proc_metric(admin, "cplb_discovery_endpoints_dropped", &[]).await;
    eprintln!(
        "{} upstreams in the ring, {dropped} left out (99 + 99 + 200 draining)",
        got.len()
    );
    assert_eq!(got.len(), 128);
    assert_eq!(dropped, (99 + 99 + 200 + 2 - 128) as f64);
    assert_eq!(
        proc.count_logs("more upstreams than the ring holds"),
        1,
        "one warning for the episode:\n{}",
        proc.logs()
    );
    // The state file keeps what the API lists.
    wait_until("the state file lists the two masters", || {
        state_addresses(&s.state) == vec![a(c, 0), a(c, 1)]
    })
    .await;
}

/// A kubeconfig whose CA is not the masters': discovery fails, and the
/// proxy runs on what it started from.
fn untrusting_kubeconfig(c: &Cluster) -> PathBuf {
    let other = cplb::standin::pki::Pki::new("another CA").unwrap();
    c.kubeconfig_with(
        "wrong-ca",
        &closed_server(),
        &other.ca_pem(),
        Auth::ClientCert,
    )
}

// Multi-threaded: the stand-in masters answer while the test waits on
// the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_with_129_addresses_starts_and_serves() {
    let s = setup(1, &[0]).await;
    let c = &s.c;
    // The master and 128 more: 129, one more than the ring holds. The
    // master sorts first, so it is among the 128 kept.
    let mut addresses: Vec<String> = fillers(10, 128, c.port)
        .iter()
        .map(|m| m.addr.to_string())
        .collect();
    addresses.push(a(c, 0));
    let state = serde_json::json!({
        "service": "default/kubernetes",
        "addresses": addresses,
        "written_at": "2026-01-01T00:00:00Z",
    });
    std::fs::write(&s.state, state.to_string()).unwrap();
    let kc = untrusting_kubeconfig(c);
    // The seed is a dead address: only the state file names the master.
    let seed = common::refused_addr();
    let y = yaml(&[seed], &discovery(&kc, &s.state, "5m"));
    let proc = CplbProcess::spawn(&y, Options::default());
    let got = proc_wait(&proc, "the state file's set", |v| v.len() == 128).await;
    assert!(got.iter().all(|u| u.1 == "state"), "{:?}", &got[..3]);
    assert!(got.contains(&(a(c, 0), "state".into(), false)));
    assert_eq!(
        proc_metric(proc.admin.unwrap(), "cplb_discovery_endpoints_dropped", &[]).await,
        1.0
    );
    // It serves: a client reaches the master (past refused fillers).
    let mut client = ApiClient::connect(proc.addr, &c.pki, None).await.unwrap();
    let (status, body) = client.get("/whoami").await.unwrap();
    assert_eq!(
        (status, body.split_whitespace().next()),
        (200, Some("master-1"))
    );
}

// Multi-threaded: the stand-in masters answer while the test waits on
// the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_state_path_blocks_nothing() {
    let s = setup(1, &[0]).await;
    let c = &s.c;
    let path = std::ffi::CString::new(s.state.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let kc = untrusting_kubeconfig(c);
    let y = yaml(&[c.addr(0)], &discovery(&kc, &s.state, "5m"));
    let started = std::time::Instant::now();
    // Waits for "cplb started", which comes after the state file is read.
    let mut proc = CplbProcess::spawn(&y, Options::default());
    eprintln!(
        "started in {:?} with a FIFO at the state path",
        started.elapsed()
    );
    let line = proc.wait_for_log("ignoring the discovery state file");
    assert!(line.contains("a FIFO, not a regular file"), "{line}");
    let mut client = ApiClient::connect(proc.addr, &c.pki, None).await.unwrap();
    let (status, body) = client.get("/whoami").await.unwrap();
    assert_eq!(
        (status, body.split_whitespace().next()),
        (200, Some("master-1"))
    );
    drop(client);
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(), Some(0), "{}", proc.logs());
}

// Multi-threaded: the stand-in masters answer while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_no_master_can_have_are_refused_warned_once_and_never_dialled() {
    let s = setup(2, &[0]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let extra = format!(
        "hash:\n  key: connection\n{}",
        discovery(&kc, &s.state, "5m")
    );
    let proc = CplbProcess::spawn(&yaml(&[c.addr(0)], &extra), Options::default());
    let admin = proc.admin.unwrap();
    proc_wait(&proc, "the API's master", |v| {
        v == [(a(c, 0), "api".to_string(), false)]
    })
    .await;
    let at = |ip: &str, port: u16| Master {
        addr: SocketAddr::new(ip.parse().unwrap(), port),
        ready: true,
    };
    let bad = [
        // cplb's own port on every address of this host: cplb itself.
        at("0.0.0.0", proc.addr.port()),
        at("169.254.169.254", c.port),
        at("224.0.0.1", c.port),
        at("255.255.255.255", c.port),
        at("::", c.port),
        at("fe80::1", c.port),
    ];
    let with = |real: &[usize]| {
        let mut v: Vec<Master> = real
            .iter()
            .map(|&i| Master {
                addr: c.addr(i),
                ready: true,
            })
            .collect();
        v.extend(bad);
        v
    };
    c.store.set_masters(&with(&[0, 1]));
    let want = vec![
        (a(c, 0), "api".to_string(), false),
        (a(c, 1), "api".to_string(), false),
    ];
    proc_wait(&proc, "only the real masters", |v| v == want).await;
    for (reason, n) in [
        ("unspecified", 2.0),
        ("link_local", 2.0),
        ("multicast", 1.0),
        ("broadcast", 1.0),
    ] {
        assert_eq!(
            proc_metric(
                admin,
                "cplb_discovery_endpoints_refused",
                &[("reason", reason)]
            )
            .await,
            n,
            "{reason}"
        );
    }
    // The same refused set in a later list warns no more.
    c.store.set_masters(&with(&[0]));
    proc_wait(&proc, "the second master draining", |v| {
        v.contains(&(a(c, 1), "api".to_string(), true))
    })
    .await;
    let warned = proc.count_logs("discovery refuses endpoints the API lists");
    eprintln!(
        "{warned} warning(s) for two lists with the same refused endpoints:\n{}",
        proc.logs()
            .lines()
            .filter(|l| l.contains("refuses endpoints"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(warned, 1);
    // Connections go to the real masters only; nothing else is dialled.
    for _ in 0..10 {
        let mut client = ApiClient::connect(proc.addr, &c.pki, None).await.unwrap();
        let (status, body) = client.get("/whoami").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("master-1"), "{body}");
    }
    let (_, _, metrics) = http(admin, "GET", "/metrics").await;
    for m in &bad {
        assert!(
            !metrics.contains(&m.addr.to_string()),
            "{} appears in /metrics",
            m.addr
        );
    }
}

/// The peak RSS of process `pid`, in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

// Multi-threaded: the stand-in masters answer while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_endpoint_list_is_refused_within_bounded_memory() {
    let s = setup(1, &[0]).await;
    let c = &s.c;
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let y = yaml(&[c.addr(0)], &discovery(&kc, &s.state, "1s"));
    let mut proc = CplbProcess::spawn(&y, Options::default());
    let admin = proc.admin.unwrap();
    let master = Master {
        addr: c.addr(0),
        ready: true,
    };
    proc_wait(&proc, "the API's master", |v| {
        v == [(a(c, 0), "api".to_string(), false)]
    })
    .await;
    let before = peak_rss_kb(proc.pid());
    // A slice past the API's own 1000 endpoints, small in bytes: the first
    // 1000 are kept (the master sorts first), the ring takes 128.
    let mut many = fillers(10, 1499, c.port);
    many.push(master);
    c.store.set_masters(&many);
    proc_wait(&proc, "128 of the first 1000", |v| v.len() == 128).await;
    let over = [("reason", "over_limit")];
    assert_eq!(
        proc_metric(admin, "cplb_discovery_endpoints_refused", &over).await,
        500.0
    );
    assert_eq!(
        proc_metric(admin, "cplb_discovery_endpoints_dropped", &[]).await,
        (1000 - 128) as f64
    );
    // 200,000 endpoints in one slice: about 19 MB of JSON, by watch event
    // and then by list.
    c.list(&[0]);
    // The others drain, and go after remove_after (1 s).
    proc_wait(&proc, "back to one master", |v| v.len() == 1).await;
    let mut huge = fillers(20, 200_000, c.port);
    huge.push(master);
    c.store.set_masters(&huge);
    let too_large = async || {
        proc_metric(
            admin,
            "cplb_discovery_errors_total",
            &[("reason", "too_large")],
        )
        .await
    };
    common::eventually(std::time::Duration::from_secs(60), async || {
        (too_large().await >= 2.0).then_some(())
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no two too_large errors (peak RSS {} kB, {before} kB before):\n{}",
            peak_rss_kb(proc.pid()),
            proc.logs()
        )
    });
    // The last good set stays.
    assert_eq!(
        admin_set(admin).await,
        vec![(a(c, 0), "api".to_string(), false)]
    );
    let peak = peak_rss_kb(proc.pid());
    let line = proc.wait_for_log("larger than 4 MiB");
    eprintln!(
        "200,000 endpoints refused: peak RSS {before} kB before, {peak} kB after ({} too_large errors)\n{line}",
        too_large().await
    );
    assert!(
        peak < before + 48 * 1024,
        "peak RSS grew from {before} to {peak} kB for a refused answer"
    );
    assert_eq!(
        proc.count_logs("more endpoints than discovery keeps"),
        1,
        "{}",
        proc.logs()
    );
}
