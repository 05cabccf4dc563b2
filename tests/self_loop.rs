//! cplb never dials itself (issue 14): an upstream that is one of its own
//! listen addresses would turn every client connection into a loop of
//! proxied connections to cplb. Refused by `--check` (literal addresses,
//! wildcard listens, names), never dialled at run time (a name resolving
//! to it, an endpoint discovery learned), shown as `self`.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::cluster::{Auth, Cluster};
use common::process::{CplbProcess, Options};
use common::{FakeUpstream, TestConfig, free_port, http, wait_until};

fn check(yaml: &str) -> (bool, String) {
    let dir = common::process::temp_dir("selfcheck");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .arg("-c")
        .arg(&path)
        .arg("-t")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

#[test]
fn check_refuses_an_upstream_that_is_the_listen_address() {
    let p = free_port();
    for (listen, upstream, how) in [
        (
            format!("127.0.0.1:{p}"),
            format!("127.0.0.1:{p}"),
            "it is the listen address",
        ),
        // A wildcard listen receives every address of the host: loopback,
        // and the host's own.
        (
            format!("0.0.0.0:{p}"),
            format!("127.0.0.9:{p}"),
            "receives connections to every address",
        ),
        (
            format!("[::1]:{p}"),
            format!("[::1]:{p}"),
            "it is the listen address",
        ),
        // A name that resolves to it.
        (
            format!("127.0.0.1:{p}"),
            format!("localhost:{p}"),
            "resolves to",
        ),
    ] {
        let yaml = format!(
            "listen: \"{listen}\"\nadmin: off\nupstreams:\n  - address: 10.0.0.1:6443\n  - address: \"{upstream}\"\n"
        );
        let (ok, text) = check(&yaml);
        println!("{text}");
        assert!(!ok, "accepted {upstream} with listen {listen}");
        assert!(text.contains("upstreams[1].address"), "{text}");
        assert!(text.contains("cplb's own address"), "{text}");
        assert!(text.contains(how), "{text}");
    }
    // Another port, and an IPv4 upstream for an IPv6-only wildcard, are
    // not cplb.
    for (listen, upstream) in [
        (
            format!("127.0.0.1:{p}"),
            format!("127.0.0.1:{}", p.wrapping_add(1).max(1)),
        ),
        (format!("[::]:{p}"), format!("127.0.0.1:{p}")),
    ] {
        let yaml =
            format!("listen: \"{listen}\"\nadmin: off\nupstreams:\n  - address: \"{upstream}\"\n");
        let (ok, text) = check(&yaml);
        assert!(ok, "refused {upstream} with listen {listen}: {text}");
    }
}

/// An upstream whose name resolves to cplb's own listen address, homed on
/// (so without the rule every connection would go there): never dialled,
/// shown as `self` in `/upstreams`, `cplb status` and the metric, logged
/// once; 20 clients all reach the real master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_cplb_itself_is_never_dialled() {
    let master = FakeUpstream::start("master").await;
    let port = free_port();
    let me = format!("localhost:{port}");
    let ring =
        cplb::ring::Ring::new([(me.as_str(), 1), (master.addr.to_string().as_str(), 1)]).unwrap();
    let node = (0..1000)
        .map(|i| format!("n{i}"))
        .find(|id| ring.first(cplb::ring::hash_key(id.as_bytes())) == Some(0))
        .unwrap();
    let yaml = TestConfig::new(&[])
        .upstream_named(&me)
        .upstream_named(&master.addr.to_string())
        .set("listen", format!("127.0.0.1:{port}"))
        .node_id(&node)
        .admin()
        .yaml();
    let p = CplbProcess::spawn(&yaml, Options::default());
    let admin = p.admin.unwrap();
    for i in 0..20 {
        let mut c = common::Client::connect(p.addr).await;
        assert_eq!(c.upstream, "master", "client {i}");
        c.ping("x").await;
    }
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    let m = common::metrics::Scrape::parse(&body);
    assert_eq!(m.get("cplb_upstream_self", &[("upstream", &me)]), 1.0);
    assert_eq!(m.get("cplb_upstream_up", &[("upstream", &me)]), 0.0);
    assert_eq!(m.get("cplb_connections_total", &[("upstream", &me)]), 0.0);
    assert_eq!(
        m.get(
            "cplb_connections_total",
            &[("upstream", &master.addr.to_string())]
        ),
        20.0
    );
    // No loop: at most the test's 20 clients ever reached cplb.
    assert!(m.get("cplb_client_connections_active", &[]) <= 20.0);
    let u = common::upstream_entry(admin, &me).await;
    assert_eq!(u["state"], "self", "{u:#}");
    assert_eq!(u["usable"], false);
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    let row = table.lines().find(|l| l.starts_with(&me)).unwrap();
    assert!(row.contains(" self "), "{row}");
    assert!(row.contains("cplb's own listen address"), "{row}");
    assert_eq!(
        p.count_logs("upstream is cplb's own listen address"),
        1,
        "{}",
        p.logs()
    );
}

/// Discovery learns this very proxy as an endpoint (cplb on a master, or a
/// listen address that covers the node's): it is listed, shown as `self`,
/// never dialled by clients, probes or the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_endpoint_that_is_cplb_itself_is_never_dialled() {
    let c = Cluster::start(1).await;
    let port = free_port();
    let me: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    c.store.set_masters(&[
        cplb::standin::endpoints::Master {
            addr: me,
            ready: true,
        },
        cplb::standin::endpoints::Master {
            addr: c.addr(0),
            ready: true,
        },
    ]);
    let kc = c.kubeconfig("self", "https://127.0.0.1:1", Auth::Token);
    let dir = common::process::temp_dir("selfdisc");
    let yaml = TestConfig::new(&[c.addr(0)])
        .set("listen", me)
        .admin()
        .hash_key("connection")
        .section(&format!(
            "discovery:\n  kubeconfig: {}\n  state_file: {}\n",
            kc.display(),
            dir.join("state.json").display()
        ))
        .yaml();
    let p = CplbProcess::spawn(&yaml, Options::default());
    let admin = p.admin.unwrap();
    let own = me.to_string();
    wait_until("discovery lists cplb's own address", || {
        common::promql::get(admin, "/upstreams")
            .is_ok_and(|(_, body)| body.contains(&format!("\"{own}\"")))
    })
    .await;
    let u = common::upstream_entry(admin, &own).await;
    assert_eq!(u["state"], "self", "{u:#}");
    assert_eq!(u["source"], "api");
    // Clients spread by connection over both: every one reaches the master.
    for _ in 0..20 {
        let mut client = cplb::standin::client::ApiClient::connect(p.addr, &c.pki, None)
            .await
            .unwrap();
        let (status, _) = client.get("/readyz").await.unwrap();
        assert_eq!(status, 200);
    }
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    let m = common::metrics::Scrape::parse(&body);
    assert_eq!(m.get("cplb_connections_total", &[("upstream", &own)]), 0.0);
    assert_eq!(m.get("cplb_upstream_self", &[("upstream", &own)]), 1.0);
    assert!(m.get("cplb_client_connections_active", &[]) <= 20.0);
}
