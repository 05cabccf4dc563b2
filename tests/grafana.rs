//! The Grafana dashboard in config/grafana/cplb.json: it parses, its panels
//! are well formed, and every metric it queries exists in the /metrics
//! output of a running cplb. (tests/prometheus.rs also runs each of its
//! queries through a real Prometheus.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::process::*;
use common::promql::{dashboard_queries, exported, get, metric_names};
use common::*;
use serde_json::Value;

pub fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/cplb.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_dashboard_parses_and_every_panel_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "cplb");
    assert!(d["title"].is_string());
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate panel id: {p}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap(), g["w"].as_i64().unwrap());
        assert!(x >= 0 && w > 0 && x + w <= 24, "gridPos off the grid: {p}");
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_string());
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries nothing", p["title"]);
        for t in targets {
            assert!(!t["expr"].as_str().unwrap().trim().is_empty());
        }
    }
    // What the issue asks the dashboard to show.
    for wanted in [
        "Upstream state",
        "Active connections per upstream",
        "Bytes",
        "Connect latency",
        "Connect failures by reason",
        "Reloads",
    ] {
        assert!(
            titles.iter().any(|t| t == wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_in_cplb_metrics() {
    let up = FakeUpstream::start("m").await;
    let mut p = CplbProcess::spawn(
        &TestConfig::new(&[up.addr])
            .admin()
            .fail_timeout(None)
            .health_check(HealthCheck::tcp().interval("100ms"))
            .yaml(),
        Options::default(),
    );
    // One reload, so the reload series exist even where label values are
    // created on first use.
    p.signal(libc::SIGHUP);
    p.wait_for_log("config reloaded");
    let (status, body) = get(p.admin.unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let have = exported(&metrics::Scrape::parse(&body));
    let queries = dashboard_queries(&dashboard());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric in {q}");
        for n in names {
            assert!(have.contains(&n), "{n} (in {q}) is not in cplb's /metrics");
            used.insert(n);
        }
    }
    println!(
        "{} queries, {} series names: {used:?}",
        queries.len(),
        used.len()
    );
}
