//! Discovery against stand-in masters over real TLS on 127.0.0.2 and up
//! (several masters on one port, as in a cluster): the watcher learns the
//! list and follows it, drops not-ready endpoints, refuses an empty list,
//! lists again after 410 Gone, authenticates with a certificate or a
//! token, names a wrong CA clearly, fails over between upstreams, and
//! never dials the kubeconfig's own server.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{Auth, Cluster};
use common::wait_until;
use cplb::discovery::client::Reason;
use cplb::discovery::{Discovered, Settings, Stats, run};
use cplb::standin::endpoints::Master;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Running {
    rx: watch::Receiver<Option<Discovered>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    fn list(&self) -> Option<Vec<String>> {
        self.rx.borrow().as_ref().map(|d| d.addresses.clone())
    }

    async fn wait_for(&self, want: &[String]) {
        let what = format!("discovery publishes {want:?}");
        wait_until(&what, || self.list().as_deref() == Some(want)).await;
    }
}

fn settings(kubeconfig: PathBuf) -> Settings {
    Settings {
        kubeconfig,
        namespace: "default".into(),
        service: "kubernetes".into(),
        port_name: "https".into(),
        tls_server_name: "kubernetes".into(),
        debounce: Duration::from_millis(100),
        debounce_max: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        sync_timeout: Duration::from_secs(1),
    }
}

/// The pacing cplb runs with (`Settings::new`: 1 s quiet time, 3 s
/// maximum wait, backoff 200 ms to 10 s), for the tests that measure it.
fn production(kubeconfig: PathBuf) -> Settings {
    Settings::new(&cplb::discovery::DiscoveryConfig {
        kubeconfig,
        namespace: "default".into(),
        service: "kubernetes".into(),
        port_name: "https".into(),
        tls_server_name: "kubernetes".into(),
        state_file: "unused".into(),
        remove_after: Duration::from_secs(300),
        weight: std::num::NonZeroU32::MIN,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
    })
}

fn start(s: Settings, candidates: Vec<SocketAddr>) -> Running {
    let (tx, rx) = watch::channel(None);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let candidates: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
    tokio::spawn(run(
        s,
        move || candidates.clone(),
        tx,
        stats.clone(),
        stop.clone(),
    ));
    Running { rx, stats, stop }
}

fn texts(c: &Cluster, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| c.addr(i).to_string()).collect()
}

/// A kubeconfig whose server is a closed port: any use of it would fail.
fn closed_server() -> String {
    format!("https://{}", common::refused_addr())
}

#[tokio::test]
async fn learns_the_masters_and_follows_additions_and_removals() {
    let c = Cluster::start(3).await;
    c.list(&[0]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let d = start(settings(kc), vec![c.addr(0)]);
    d.wait_for(&texts(&c, &[0])).await;
    assert_eq!(d.rx.borrow().as_ref().unwrap().via, c.addr(0).to_string());
    c.list(&[0, 1, 2]);
    d.wait_for(&texts(&c, &[0, 1, 2])).await;
    c.list(&[0, 2]);
    d.wait_for(&texts(&c, &[0, 2])).await;
    // IPv6 endpoints are formatted [addr]:port; they share the list.
    let v6: SocketAddr = "[fd00::10]:6443".parse().unwrap();
    let mut masters: Vec<Master> = [0, 2]
        .iter()
        .map(|&i| Master {
            addr: c.addr(i),
            ready: true,
        })
        .collect();
    masters.push(Master {
        addr: v6,
        ready: true,
    });
    c.store.set_masters(&masters);
    let mut want = texts(&c, &[0, 2]);
    want.push("[fd00::10]:6443".into());
    d.wait_for(&want).await;
    eprintln!(
        "events {}, lists {}, watches {}",
        d.stats.events.load(Ordering::Relaxed),
        c.store.lists(),
        c.store.watches()
    );
}

#[tokio::test]
async fn not_ready_endpoints_and_other_ports_are_excluded() {
    let c = Cluster::start(3).await;
    c.store.set_masters(&[
        Master {
            addr: c.addr(0),
            ready: true,
        },
        Master {
            addr: c.addr(1),
            ready: false,
        },
        Master {
            addr: c.addr(2),
            ready: true,
        },
    ]);
    // A slice of the same Service whose port has another name.
    let mut other = (*c
        .store
        .get_slice("default", &format!("kubernetes-ipv4-{}", c.port))
        .unwrap())
    .clone();
    other.metadata.name = Some("kubernetes-metrics".into());
    other.ports.as_mut().unwrap()[0].name = Some("metrics".into());
    other.endpoints[0].addresses = vec!["127.0.0.9".into()];
    c.store.put_slice(other);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let d = start(settings(kc), vec![c.addr(0)]);
    d.wait_for(&texts(&c, &[0, 2])).await;
    c.store.set_masters(&[
        Master {
            addr: c.addr(0),
            ready: false,
        },
        Master {
            addr: c.addr(1),
            ready: true,
        },
        Master {
            addr: c.addr(2),
            ready: true,
        },
    ]);
    d.wait_for(&texts(&c, &[1, 2])).await;
}

#[tokio::test]
async fn an_empty_list_is_refused_and_counted() {
    let c = Cluster::start(2).await;
    c.list(&[0, 1]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let d = start(settings(kc), vec![c.addr(0)]);
    d.wait_for(&texts(&c, &[0, 1])).await;
    c.store.set_masters(&[]);
    wait_until("the empty list is refused", || {
        d.stats.errors(Reason::Empty) >= 1
    })
    .await;
    assert_eq!(
        d.list().unwrap(),
        texts(&c, &[0, 1]),
        "the last good list stays"
    );
    // All endpoints not ready is empty too.
    c.store.set_masters(&[Master {
        addr: c.addr(0),
        ready: false,
    }]);
    wait_until("all-not-ready is refused", || {
        d.stats.errors(Reason::Empty) >= 2
    })
    .await;
    assert_eq!(d.list().unwrap(), texts(&c, &[0, 1]));
    c.list(&[1]);
    d.wait_for(&texts(&c, &[1])).await;
    eprintln!("last error: {:?}", d.stats.last_error());
}

#[tokio::test]
async fn a_flap_within_the_debounce_is_published_once() {
    let c = Cluster::start(2).await;
    c.list(&[0]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let mut s = settings(kc);
    s.debounce = Duration::from_millis(500);
    let d = start(s, vec![c.addr(0)]);
    d.wait_for(&texts(&c, &[0])).await;
    let published = d.stats.published.load(Ordering::Relaxed);
    // A joining master adds and removes itself several times.
    for _ in 0..3 {
        c.list(&[0, 1]);
        c.list(&[0]);
    }
    c.list(&[0, 1]);
    d.wait_for(&texts(&c, &[0, 1])).await;
    assert_eq!(
        d.stats.published.load(Ordering::Relaxed),
        published + 1,
        "seven changes in a burst publish one list"
    );
}

#[tokio::test]
async fn a_compacted_history_makes_it_list_again() {
    let c = Cluster::start(2).await;
    c.list(&[0]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let d = start(settings(kc), vec![c.addr(0)]);
    d.wait_for(&texts(&c, &[0])).await;
    wait_until("the watch is open", || c.store.open_watches() == 1).await;
    let lists = c.store.lists();
    // The change is never streamed: only a list after 410 shows it.
    c.store.compact_with(|s| {
        s.set_masters(&[
            Master {
                addr: c.addr(0),
                ready: true,
            },
            Master {
                addr: c.addr(1),
                ready: true,
            },
        ])
    });
    d.wait_for(&texts(&c, &[0, 1])).await;
    assert!(c.store.lists() > lists, "listed again");
    assert!(c.store.gone() >= 1, "the resumed watch was answered 410");
    assert!(d.stats.errors(Reason::Gone) >= 1, "410 counted");
    eprintln!("gone answers {}, lists {}", c.store.gone(), c.store.lists());
}

#[tokio::test]
async fn token_and_token_file_authenticate_and_a_wrong_token_is_an_auth_error() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    for (name, auth) in [("token", Auth::Token), ("token-file", Auth::TokenFile)] {
        let kc = c.kubeconfig(name, &closed_server(), auth);
        let d = start(settings(kc), vec![c.addr(0)]);
        d.wait_for(&texts(&c, &[0])).await;
    }
    let kc = c.kubeconfig("wrong", &closed_server(), Auth::WrongToken);
    let d = start(settings(kc), vec![c.addr(0)]);
    wait_until("401 is an auth error", || d.stats.errors(Reason::Auth) >= 1).await;
    let e = d.stats.last_error().unwrap();
    eprintln!("wrong token: {e}");
    assert!(
        e.contains(&c.addr(0).to_string()) && e.contains("401"),
        "{e}"
    );
    assert_eq!(d.list(), None, "nothing published");
}

#[tokio::test]
async fn a_wrong_ca_is_a_clear_tls_error() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    let other = cplb::standin::pki::Pki::new("some other CA").unwrap();
    let kc = c.kubeconfig_with(
        "wrong-ca",
        &closed_server(),
        &other.ca_pem(),
        Auth::ClientCert,
    );
    let d = start(settings(kc), vec![c.addr(0)]);
    wait_until("a TLS error", || d.stats.errors(Reason::Tls) >= 1).await;
    let e = d.stats.last_error().unwrap();
    eprintln!("wrong CA: {e}");
    // The verification failure itself, not any certificate error: a wrong
    // name or an expired certificate must not pass for an unknown CA.
    assert!(
        e.contains("invalid peer certificate: UnknownIssuer"),
        "not the unknown-issuer failure: {e}"
    );
    assert!(
        e.contains(&c.addr(0).to_string()),
        "names the upstream: {e}"
    );
    assert_eq!(d.list(), None);
}

#[tokio::test]
async fn a_wrong_tls_server_name_is_refused() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let mut s = settings(kc);
    s.tls_server_name = "not-the-apiserver".into();
    let d = start(s, vec![c.addr(0)]);
    wait_until("a TLS error", || d.stats.errors(Reason::Tls) >= 1).await;
    let e = d.stats.last_error().unwrap();
    eprintln!("wrong name: {e}");
    assert!(
        e.contains("certificate not valid for name \"not-the-apiserver\""),
        "not the name mismatch: {e}"
    );
    assert_eq!(d.list(), None);
}

#[tokio::test]
async fn fails_over_to_the_next_upstream() {
    let mut c = Cluster::start(3).await;
    c.list(&[0, 1, 2]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    c.masters[0].stop().await;
    let dead = common::refused_addr();
    let d = start(settings(kc), vec![dead, c.addr(0), c.addr(2), c.addr(1)]);
    d.wait_for(&texts(&c, &[0, 1, 2])).await;
    assert_eq!(d.rx.borrow().as_ref().unwrap().via, c.addr(2).to_string());
    assert!(
        d.stats.errors(Reason::Connect) >= 2,
        "{:?}",
        d.stats.last_error()
    );
    // The master it watches through goes away: it moves on to the next.
    c.masters[2].stop().await;
    c.list(&[1]);
    d.wait_for(&texts(&c, &[1])).await;
    assert_eq!(d.rx.borrow().as_ref().unwrap().via, c.addr(1).to_string());
}

#[tokio::test]
async fn the_kubeconfig_server_is_never_dialled() {
    // The kubeconfig points at "the local proxy": a listener that accepts
    // and never answers, like an overloaded or wedged cplb.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let dialled = Arc::new(AtomicUsize::new(0));
    let n = dialled.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = proxy.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let c = Cluster::start(2).await;
    c.list(&[0, 1]);
    let kc = c.kubeconfig("self", &format!("https://{proxy_addr}"), Auth::ClientCert);
    let d = start(settings(kc), vec![c.addr(1)]);
    d.wait_for(&texts(&c, &[0, 1])).await;
    assert_eq!(
        dialled.load(Ordering::SeqCst),
        0,
        "the kubeconfig's server was dialled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cplb_discover_prints_the_list_with_the_kubeconfig_server_closed() {
    let c = Cluster::start(2).await;
    c.list(&[0, 1]);
    let kc = c.kubeconfig("cli", &closed_server(), Auth::ClientCert);
    let config = c.dir.join("cplb.yaml");
    std::fs::write(
        &config,
        format!(
            "upstreams:\n  - address: {}\ndiscovery:\n  kubeconfig: {}\n  state_file: {}\n",
            c.addr(1),
            kc.display(),
            c.dir.join("upstreams.json").display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
            .args(["--config", config.to_str().unwrap(), "discover", "--once"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > end {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["service"], "default/kubernetes");
    assert_eq!(v["addresses"], serde_json::json!(texts(&c, &[0, 1])));
    assert_eq!(v["via"], c.addr(1).to_string());
}

#[tokio::test]
async fn the_stand_in_serves_version_and_discovery_documents_to_kube_rs() {
    let c = Cluster::start(1).await;
    let kc = c.kubeconfig("docs", &closed_server(), Auth::ClientCert);
    let base = cplb::discovery::client::load(&kc).await.unwrap();
    let client =
        cplb::discovery::client::for_upstream(&base, &kc, &c.addr(0).to_string(), "kubernetes")
            .unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
    assert_eq!(
        client.list_core_api_versions().await.unwrap().versions,
        ["v1"]
    );
    let groups = client.list_api_groups().await.unwrap();
    assert!(
        groups.groups.iter().any(|g| g.name == "discovery.k8s.io"),
        "{groups:?}"
    );
    let res = client
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .unwrap();
    let slices = res
        .resources
        .iter()
        .find(|r| r.name == "endpointslices")
        .unwrap();
    assert!(slices.namespaced && slices.verbs.contains(&"watch".to_string()));
}

#[tokio::test]
async fn a_missing_kubeconfig_is_a_clear_error() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    let missing = c.dir.join("no-such-kubeconfig");
    let d = start(settings(missing.clone()), vec![c.addr(0)]);
    wait_until("a kubeconfig error", || {
        d.stats.errors(Reason::Kubeconfig) >= 1
    })
    .await;
    let e = d.stats.last_error().unwrap();
    eprintln!("missing kubeconfig: {e}");
    assert!(
        e.contains(&missing.display().to_string()),
        "names the file: {e}"
    );
    assert_eq!(d.list(), None);
}

#[tokio::test]
async fn kubelet_pem_and_inline_credentials_load() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    for (name, auth) in [("kubelet-pem", Auth::KubeletPem), ("inline", Auth::Inline)] {
        let kc = c.kubeconfig(name, &closed_server(), auth);
        let d = start(settings(kc), vec![c.addr(0)]);
        d.wait_for(&texts(&c, &[0])).await;
        assert_eq!(d.stats.errors(Reason::Auth), 0, "{name}");
    }
}

#[test]
fn base64_matches_the_rfc_vectors() {
    use common::cluster::base64;
    let got: Vec<String> = ["", "f", "fo", "foo", "foob", "fooba", "foobar"]
        .iter()
        .map(|s| base64(s.as_bytes()))
        .collect();
    assert_eq!(
        got,
        [
            "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"
        ]
    );
}

#[tokio::test]
async fn a_master_that_never_answers_is_left_for_the_next() {
    // Accepts TCP and then says nothing: no TLS handshake, no HTTP.
    let wedged = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wedged_addr = wedged.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = wedged.accept().await {
            held.push(s);
        }
    });
    let c = Cluster::start(1).await;
    c.list(&[0]);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let d = start(settings(kc), vec![wedged_addr, c.addr(0)]);
    d.wait_for(&texts(&c, &[0])).await;
    assert!(
        d.stats.errors(Reason::Timeout) >= 1,
        "{:?}",
        d.stats.last_error()
    );
}

#[tokio::test]
async fn a_kubeconfig_that_skips_tls_verification_is_refused_and_no_token_is_sent() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    // A server with a certificate from another CA, taking the same token:
    // what an EndpointSlice naming an attacker's address would reach.
    let other = cplb::standin::pki::Pki::new("an attacker's CA").unwrap();
    let api = cplb::standin::KubeApi::new(c.store.clone()).with_token(common::cluster::TOKEN);
    let rogue =
        cplb::standin::ApiServer::start_kube("rogue", &other, "127.0.0.1:0".parse().unwrap(), api)
            .await
            .unwrap();
    let kc = c.kubeconfig("insecure", &closed_server(), Auth::Token);
    let text = std::fs::read_to_string(&kc).unwrap();
    let text = text.replace(
        "    certificate-authority: ca.crt\n",
        "    certificate-authority: ca.crt\n    insecure-skip-tls-verify: true\n",
    );
    assert!(text.contains("insecure-skip-tls-verify: true"), "{text}");
    std::fs::write(&kc, text).unwrap();
    let d = start(settings(kc.clone()), vec![rogue.addr, c.addr(0)]);
    // Two rounds: each loads the kubeconfig and refuses it before dialling
    // (or, were it accepted, the rogue server hears from it).
    wait_until("the kubeconfig refused twice, or the rogue dialled", || {
        d.stats.errors(Reason::Kubeconfig) >= 2 || rogue.requests() > 0
    })
    .await;
    assert_eq!(
        rogue.requests(),
        0,
        "the token went to an unverified server"
    );
    let e = d.stats.last_error().unwrap();
    eprintln!("insecure kubeconfig: {e}");
    assert!(
        e.contains(&kc.display().to_string())
            && e.contains("insecure-skip-tls-verify: true")
            && e.contains("must verify their certificates"),
        "{e}"
    );
    assert_eq!(
        c.masters[0].requests(),
        0,
        "an unverified connection was made"
    );
    assert_eq!(d.list(), None, "nothing published");
}

/// Waits, at most `deadline`, for `cond`; panics naming `what`.
async fn wait_long(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    common::eventually(deadline, async || cond().then_some(()))
        .await
        .unwrap_or_else(|_| panic!("timed out ({deadline:?}) waiting for: {what}"));
}

#[tokio::test]
async fn an_api_answering_every_watch_with_410_is_relisted_with_backoff_and_published() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    c.store.set_watch_gone(true);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let s = production(kc);
    let (min, max) = (s.backoff_min, s.backoff_max);
    let started = std::time::Instant::now();
    let d = start(s, vec![c.addr(0)]);
    // Published although no watch ever works.
    d.wait_for(&texts(&c, &[0])).await;
    let first = started.elapsed();
    wait_long("six 410s", Duration::from_secs(60), || c.store.gone() >= 6).await;
    let (elapsed, lists, gone) = (started.elapsed(), c.store.lists(), c.store.gone());
    eprintln!(
        "410 on every watch: {lists} lists and {gone} 410s in {elapsed:.2?} ({:.1} lists per second; \
         without backoff 22 per second), first publish after {first:.2?}",
        lists as f64 / elapsed.as_secs_f64()
    );
    assert!(d.stats.errors(Reason::Gone) >= 6);
    // Five waits between six 410s, each at least half of its step of the
    // doubling from 200 ms: 100 + 200 + 400 + 800 + 1600 ms. A machine
    // slower than this one only makes it longer.
    let least: Duration = (0..5).map(|i| (min * (1 << i)).min(max) / 2).sum();
    assert!(
        elapsed >= least,
        "{lists} lists after {gone} 410s within {elapsed:?}, less than {least:?} for six: no backoff"
    );
    assert!(lists <= gone + 1, "a list per 410 at most");
}

#[tokio::test]
async fn a_service_changing_every_half_second_is_published_every_few_seconds() {
    let c = Cluster::start(1).await;
    c.list(&[0]);
    // The Service changes every 500 ms, each time to a set not seen before.
    let (store, m0, port) = (c.store.clone(), c.addr(0), c.port);
    let churn = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for k in 0u32.. {
            tick.tick().await;
            let other = SocketAddr::new(
                std::net::Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8).into(),
                port,
            );
            store.set_masters(&[
                Master {
                    addr: m0,
                    ready: true,
                },
                Master {
                    addr: other,
                    ready: true,
                },
            ]);
        }
    });
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let s = production(kc);
    let max_wait = s.debounce_max;
    let started = std::time::Instant::now();
    let d = start(s, vec![c.addr(0)]);
    let mut at = Vec::new();
    for n in 1..=4 {
        // The first list included: published while the changes go on.
        wait_long(
            "a publication while the Service keeps changing",
            Duration::from_secs(20),
            || d.stats.published.load(Ordering::Relaxed) >= n,
        )
        .await;
        at.push(started.elapsed());
    }
    assert!(!churn.is_finished());
    churn.abort();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "a change every 500 ms: first publication after {:.2?}, then every {gaps:.2?} (maximum wait {max_wait:?})",
        at[0]
    );
}

#[tokio::test]
async fn a_list_is_published_even_when_its_watch_fails_at_once() {
    let c = Cluster::start(2).await;
    c.list(&[0, 1]);
    c.store.set_watch_fails(true);
    let kc = c.kubeconfig("cert", &closed_server(), Auth::ClientCert);
    let started = std::time::Instant::now();
    let d = start(production(kc), vec![c.addr(0), c.addr(1)]);
    d.wait_for(&texts(&c, &[0, 1])).await;
    eprintln!(
        "watch failing at once: published after {:.2?} ({} lists, {} watches failed; quiet time 1 s)",
        started.elapsed(),
        c.store.lists(),
        c.store.watches()
    );
    assert!(c.store.watches() >= 1, "the watch was tried");
    assert!(
        d.stats.errors(Reason::Api) >= 1,
        "{:?}",
        d.stats.last_error()
    );
}
