//! The admin endpoint: status codes, readiness, JSON, Prometheus text,
//! and resistance to slow clients.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_and_content_types() {
    let up = FakeUpstream::start("m").await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).admin().config()).await;
    let a = proxy.admin.expect("admin enabled");
    let (st, head, body) = http(a, "GET", "/healthz").await;
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    assert!(head.to_lowercase().contains("content-type: text/plain"));
    assert_eq!(http(a, "HEAD", "/healthz").await.0, 200);
    assert_eq!(http(a, "GET", "/readyz").await.0, 200);
    let (st, head, _) = http(a, "GET", "/metrics").await;
    assert_eq!(st, 200);
    assert!(head.contains("version=0.0.4"), "{head}");
    assert_eq!(http(a, "GET", "/nope").await.0, 404);
    assert_eq!(http(a, "GET", "/healthz/extra").await.0, 404);
    let (st, head, _) = http(a, "POST", "/healthz").await;
    assert_eq!(st, 405);
    assert!(
        head.contains("allow: GET, HEAD") || head.contains("Allow: GET, HEAD"),
        "{head}"
    );
    assert_eq!(http(a, "DELETE", "/upstreams").await.0, 405);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_a_reason_when_no_upstream_is_usable() {
    let dead = refused_addr();
    let proxy = Proxy::start(TestConfig::new(&[dead]).admin().config()).await;
    let a = proxy.admin.unwrap();
    assert_eq!(
        http(a, "GET", "/readyz").await.0,
        200,
        "unknown yet: usable until it fails"
    );
    assert!(Client::connect_from(None, proxy.addr).await.is_none());
    let (st, _, body) = http(a, "GET", "/readyz").await;
    assert_eq!(st, 503);
    assert!(
        body.contains(&dead.to_string()) && body.contains("marked down"),
        "{body}"
    );
    assert_eq!(
        http(a, "GET", "/healthz").await.0,
        200,
        "liveness is not readiness"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_json_reports_state_traffic_and_resolution() {
    let up = FakeUpstream::start("m").await;
    let dead = refused_addr();
    let proxy = Proxy::start(
        TestConfig::new(&[up.addr, dead])
            .admin()
            .hash_key("connection")
            .config(),
    )
    .await;
    // Enough connections that the dead one is tried (and marked down).
    for _ in 0..10 {
        let mut c = Client::connect(proxy.addr).await;
        c.ping("0123456789").await;
    }
    let ua = up.addr.to_string();
    wait_until("byte counters caught up", || {
        proxy.scrape().get(
            "cplb_bytes_total",
            &[("upstream", &ua), ("direction", "to_client")],
        ) >= 130.0
    })
    .await;
    let (st, head, body) = http(proxy.admin.unwrap(), "GET", "/upstreams").await;
    assert_eq!(st, 200);
    assert!(head.contains("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let live = list
        .iter()
        .find(|u| u["address"] == up.addr.to_string())
        .unwrap();
    let gone = list
        .iter()
        .find(|u| u["address"] == dead.to_string())
        .unwrap();
    assert_eq!(live["state"], "up");
    assert_eq!(live["resolved"][0], up.addr.to_string());
    assert_eq!(live["weight"], 1);
    assert_eq!(live["connections_total"], 10);
    assert_eq!(live["bytes_to_upstream"], 10 * 11);
    assert_eq!(live["bytes_to_client"], 10 * (11 + 2));
    assert_eq!(gone["state"], "down");
    assert_eq!(gone["passive"]["recent_failures"], 1);
    assert!(
        gone["since"].as_f64().unwrap() > 1.7e9,
        "since is a Unix time"
    );
    wait_until("connections closed", || {
        proxy.scrape().get("cplb_client_connections_active", &[]) == 0.0
    })
    .await;
    let (_, _, body) = http(proxy.admin.unwrap(), "GET", "/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v[0]["active_connections"].as_i64().unwrap() + v[1]["active_connections"].as_i64().unwrap(),
        0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic() {
    let up = FakeUpstream::start("m").await;
    let dead = refused_addr();
    let proxy = Proxy::start(
        TestConfig::new(&[up.addr, dead])
            .admin()
            .hash_key("connection")
            .set("max_connections", 3)
            .config(),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(proxy.addr).await;
        c.ping("abc").await; // 4 bytes each way, plus "m\n" greeting
        held.push(c);
    }
    assert!(
        Client::connect_from(None, proxy.addr).await.is_none(),
        "4th over max_connections"
    );
    // The worker adds to the byte counters right after write() returns, so
    // the client can see the echo an instant before the count lands.
    let u0 = up.addr.to_string();
    wait_until("byte counters caught up", || {
        let s = proxy.scrape();
        s.get(
            "cplb_bytes_total",
            &[("upstream", &u0), ("direction", "to_client")],
        ) >= 18.0
            && s.get(
                "cplb_bytes_total",
                &[("upstream", &u0), ("direction", "to_upstream")],
            ) >= 12.0
    })
    .await;
    let (st, _, text) = http(proxy.admin.unwrap(), "GET", "/metrics").await;
    assert_eq!(st, 200);
    let s = common::metrics::Scrape::parse(&text);
    let u = up.addr.to_string();
    let d = dead.to_string();
    assert_eq!(s.get("cplb_connections_total", &[("upstream", &u)]), 3.0);
    assert_eq!(s.get("cplb_connections_active", &[("upstream", &u)]), 3.0);
    assert_eq!(
        s.get(
            "cplb_bytes_total",
            &[("upstream", &u), ("direction", "to_upstream")]
        ),
        12.0
    );
    assert_eq!(
        s.get(
            "cplb_bytes_total",
            &[("upstream", &u), ("direction", "to_client")]
        ),
        18.0
    );
    assert_eq!(s.get("cplb_upstream_up", &[("upstream", &u)]), 1.0);
    let failures = s.get(
        "cplb_connect_failures_total",
        &[("upstream", &d), ("reason", "refused")],
    );
    assert!(
        failures <= 1.0,
        "max_fails=1: at most one refused connect, got {failures}"
    );
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &d)]),
        1.0 - failures
    );
    assert_eq!(
        s.get("cplb_upstream_state_changes_total", &[("upstream", &d)]),
        failures
    );
    assert_eq!(
        s.get(
            "cplb_client_connections_rejected_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    assert_eq!(s.get("cplb_client_connections_active", &[]), 3.0);
    assert_eq!(s.get("cplb_connect_duration_seconds_count", &[]), 3.0);
    assert_eq!(
        s.get("cplb_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert_eq!(s.get("cplb_config_last_reload_successful", &[]), 1.0);
    assert!(s.get("cplb_config_last_reload_success_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(s.types["cplb_connections_total"], "counter");
    assert_eq!(s.types["cplb_connections_active"], "gauge");
    assert_eq!(s.types["cplb_connect_duration_seconds"], "histogram");
    for name in [
        "cplb_connect_failures_total",
        "cplb_all_upstreams_down_total",
        "cplb_config_last_reload_success_timestamp_seconds",
        "cplb_upstream_state_changes_total",
    ] {
        assert!(s.types.contains_key(name), "{name} exported");
    }
    drop(held);
    wait_until("gauges back to 0", || {
        let s = proxy.scrape();
        s.get("cplb_connections_active", &[("upstream", &u)]) == 0.0
            && s.get("cplb_client_connections_active", &[]) == 0.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_admin_clients_do_not_stall_the_proxy_or_the_probes() {
    let up = FakeUpstream::start("m").await;
    let proxy = Proxy::start(TestConfig::new(&[up.addr]).admin().config()).await;
    let a = proxy.admin.unwrap();
    // Twenty clients that send half a request line and then nothing.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        slow.push(s);
    }
    for i in 0..5 {
        assert_eq!(
            http(a, "GET", "/healthz").await.0,
            200,
            "probe {i} answered"
        );
        let mut c = Client::connect(proxy.addr).await;
        c.ping("still proxying").await;
    }
    proxy.shutdown().await;
}

/// Every labelled series whose label values are known in advance, for one
/// upstream: present at 0 before any event.
fn upstream_series(u: &str) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let mut v = vec![
        ("cplb_connections_total", vec![]),
        ("cplb_connections_active", vec![]),
        ("cplb_connections_displaced", vec![]),
        ("cplb_upstream_state_changes_total", vec![]),
    ];
    for d in ["to_upstream", "to_client"] {
        v.push(("cplb_bytes_total", vec![("direction", d.to_string())]));
    }
    for r in cplb::metrics::FAILURE_REASONS {
        v.push((
            "cplb_connect_failures_total",
            vec![("reason", r.to_string())],
        ));
    }
    for r in [
        "upstream_down",
        "upstream_draining",
        "shutdown",
        "idle_timeout",
        "failback",
    ] {
        v.push((
            "cplb_connections_closed_total",
            vec![("reason", r.to_string())],
        ));
    }
    v.push((
        "cplb_health_checks_total",
        vec![("result", "success".into()), ("reason", "none".into())],
    ));
    for r in cplb::metrics::PROBE_FAILURE_REASONS {
        v.push((
            "cplb_health_checks_total",
            vec![("result", "failure".into()), ("reason", r.to_string())],
        ));
    }
    for (_, labels) in &mut v {
        labels.push(("upstream", u.to_string()));
    }
    v
}

fn assert_zero(s: &metrics::Scrape, name: &str, labels: &[(&str, String)]) {
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(s.find(name, &l), Some(0.0), "{name}{l:?} missing or not 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_label_values_exist_at_zero_from_start_up() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = process::temp_dir("zero");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, TestConfig::new(&[a.addr]).admin().yaml()).unwrap();
    let proxy = Proxy::start(cplb::Config::load(&path).unwrap()).await;
    let (st, _, body) = http(proxy.admin.unwrap(), "GET", "/metrics").await;
    assert_eq!(st, 200);
    let s = metrics::Scrape::parse(&body);
    let mut want: Vec<(&str, Vec<(&str, String)>)> = vec![];
    for r in ["success", "failure"] {
        want.push(("cplb_config_reloads_total", vec![("result", r.into())]));
    }
    for r in ["max_connections", "no_upstream", "accept_error"] {
        want.push((
            "cplb_client_connections_rejected_total",
            vec![("reason", r.into())],
        ));
    }
    want.push(("cplb_all_upstreams_down_total", vec![]));
    for t in ["admin", "watch", "reloader", "failback", "sighup"] {
        want.push(("cplb_task_panics_total", vec![("task", t.into())]));
    }
    want.extend(upstream_series(&a.addr.to_string()));
    for (name, labels) in &want {
        assert_zero(&s, name, labels);
    }
    println!("{} series at 0 on the first scrape", want.len());

    // An upstream added by a reload has its series from that moment.
    std::fs::write(&path, TestConfig::new(&[a.addr, b.addr]).admin().yaml()).unwrap();
    proxy.reload.reload().await.unwrap();
    let (_, _, body) = http(proxy.admin.unwrap(), "GET", "/metrics").await;
    let s = metrics::Scrape::parse(&body);
    for (name, labels) in upstream_series(&b.addr.to_string()) {
        assert_zero(&s, name, &labels);
    }
    proxy.shutdown().await;
}

fn usable_in_json(body: &str, address: &str) -> bool {
    let list: serde_json::Value = serde_json::from_str(body).unwrap();
    let u = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in {body}"));
    u["usable"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_up_gauge_and_upstreams_json_agree_after_fail_timeout() {
    let dead = refused_addr();
    let conf = TestConfig::new(&[dead])
        .admin()
        .fail_timeout(Some("3s"))
        .each_upstream("max_fails", 1);
    let proxy = Proxy::start(conf.config()).await;
    let a = proxy.admin.unwrap();
    let d = dead.to_string();
    let usable = || async { usable_in_json(&http(a, "GET", "/upstreams").await.2, &d) };
    let gauge = || async {
        let text = http(a, "GET", "/metrics").await.2;
        metrics::Scrape::parse(&text).get("cplb_upstream_up", &[("upstream", &d)])
    };
    let both = || async { (usable().await, gauge().await) };
    assert_eq!(both().await, (true, 1.0));
    assert!(Client::connect_from(None, proxy.addr).await.is_none());
    assert_eq!(
        both().await,
        (false, 0.0),
        "marked down by the failed connect"
    );
    // No event happens when fail_timeout passes: wait until /upstreams
    // says usable, then the gauge must say the same.
    let start = std::time::Instant::now();
    while !usable().await {
        assert!(start.elapsed() < DEADLINE, "fail_timeout never lapsed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!("usable again after {:?}", start.elapsed());
    assert_eq!(gauge().await, 1.0, "/metrics disagrees with /upstreams");
    proxy.shutdown().await;
}
