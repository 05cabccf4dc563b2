//! The Prometheus alerting rules in config/prometheus/: the plain rules file
//! and the PrometheusRule manifest agree, the real `promtool` accepts them
//! and passes their unit tests, they query only series cplb exports, and a
//! real Prometheus server scrapes a running cplb, loads them, and accepts
//! every query of the Grafana dashboard.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::*;
use common::promql::{concrete, dashboard_queries, exported, get, metric_names, url_encode};
use common::*;
use serde_yaml_ng::Value;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus")
}

fn yaml(file: &str) -> Value {
    let text =
        std::fs::read_to_string(rules_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn rules() -> Vec<Value> {
    yaml("cplb-alerts.yaml")["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

fn alert_names() -> BTreeSet<String> {
    rules()
        .iter()
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_string()
        })
        .collect()
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_prometheusrule_manifest_has_the_same_groups_as_the_rules_file() {
    let plain = yaml("cplb-alerts.yaml");
    let manifest = yaml("cplb-prometheusrule.yaml");
    assert_eq!(manifest["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(
        manifest["spec"]["groups"], plain["groups"],
        "edit both files, or regenerate the manifest's spec from cplb-alerts.yaml"
    );
    let expected: BTreeSet<String> = [
        "CplbNoUsableUpstream",
        "CplbUpstreamDown",
        "CplbConfigReloadFailed",
        "CplbConnectionsRejectedAtLimit",
        "CplbLastResortEpisodes",
        "CplbAcceptErrors",
        "CplbTaskPanicked",
    ]
    .map(String::from)
    .into();
    assert_eq!(alert_names(), expected);
}

#[test]
fn promtool_checks_the_rules() {
    if !require::tool("promtool_checks_the_rules", "promtool", "prometheus") {
        return;
    }
    let (ok, out) = promtool(&["check", "rules", "cplb-alerts.yaml"]);
    println!("{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules().len())),
        "{out}"
    );
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert_firing_and_not() {
    if !require::tool(
        "promtool_unit_tests_pass_and_cover_every_alert_firing_and_not",
        "promtool",
        "prometheus",
    ) {
        return;
    }
    let (ok, out) = promtool(&["test", "rules", "cplb-alerts.test.yaml"]);
    println!("{out}");
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let tests = yaml("cplb-alerts.test.yaml");
    let cases: Vec<&Value> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
        .collect();
    for alert in alert_names() {
        let of = |firing: bool| {
            cases.iter().any(|c| {
                c["alertname"] == alert.as_str()
                    && c["exp_alerts"].as_sequence().unwrap().is_empty() != firing
            })
        };
        assert!(of(true), "no promtool case where {alert} fires");
        assert!(of(false), "no promtool case where {alert} stays quiet");
    }
}

#[test]
fn metric_name_tokenizer() {
    let names = |e| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (upstream) (rate(cplb_bytes_total{direction="to_client", upstream=~"$upstream"}[$__rate_interval]))"#
        ),
        ["cplb_bytes_total"]
    );
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le) (rate(cplb_connect_duration_seconds_bucket[5m]))) / on (instance) group_left up"
        ),
        ["cplb_connect_duration_seconds_bucket", "up"]
    );
    assert_eq!(
        names("max without (upstream) (cplb_upstream_up) == 0"),
        ["cplb_upstream_up"]
    );
    assert_eq!(
        names("increase(a_total[5m] offset 1h) > 0 and b unless c"),
        ["a_total", "b", "c"]
    );
}

/// A cplb binary in front of one fake upstream, with its admin endpoint on.
pub async fn running_cplb() -> (CplbProcess, FakeUpstream) {
    let up = FakeUpstream::start("m").await;
    let p = CplbProcess::spawn(
        &TestConfig::new(&[up.addr])
            .admin()
            .fail_timeout(None)
            .yaml(),
        Options::default(),
    );
    (p, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_query_only_series_cplb_exports() {
    let (p, _up) = running_cplb().await;
    let (status, body) = get(p.admin.unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let have = exported(&metrics::Scrape::parse(&body));
    for r in rules() {
        let expr = r["expr"].as_str().unwrap();
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric found in {expr}");
        for n in names {
            assert!(
                have.contains(&n),
                "{}: {n} is not in cplb's /metrics",
                r["alert"].as_str().unwrap()
            );
        }
    }
}

/// A Prometheus server in a temp dir; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cplb\n    static_configs:\n      - targets: ['{target}']\n",
            rules_dir().join("cplb-alerts.yaml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // Free now; Prometheus binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`: the result vector, or None if not answered yet.
    fn query(&mut self, q: &str) -> Option<Vec<serde_json::Value>> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={q}")).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_cplb_and_loads_the_rules() {
    if !require::tool(
        "a_real_prometheus_scrapes_cplb_and_loads_the_rules",
        "prometheus",
        "prometheus",
    ) {
        return;
    }
    let (p, up) = running_cplb().await;
    let admin = p.admin.unwrap();
    let mut prom = Prometheus::start(admin);
    let started = Instant::now();
    // Prometheus starts, scrapes every second: bounded, but not tight.
    let deadline = Duration::from_secs(60);
    let value = |r: &serde_json::Value| r["value"][1].as_str().unwrap_or("").to_string();
    let up_series = eventually(deadline, async || {
        let r = prom.query("up")?;
        r.iter().find(|s| value(s) == "1").cloned()
    })
    .await
    .unwrap_or_else(|_| panic!("no up == 1 within {deadline:?}:\n{}", prom.log()));
    println!("up == 1 after {:?}: {up_series}", started.elapsed());
    assert_eq!(up_series["metric"]["instance"], admin.to_string());
    assert_eq!(up_series["metric"]["job"], "cplb");
    let series = eventually(deadline, async || {
        prom.query("cplb_upstream_up").filter(|r| !r.is_empty())
    })
    .await
    .unwrap_or_else(|_| panic!("no cplb_upstream_up:\n{}", prom.log()));
    println!("cplb_upstream_up: {series:?}");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["metric"]["upstream"], up.addr.to_string());
    assert_eq!(value(&series[0]), "1");
    // The rules file loaded into the real server, every alert in it, none firing.
    let (status, body) = get(prom.addr, "/api/v1/rules").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let loaded: BTreeSet<String> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(loaded, alert_names());
    let (_, alerts) = get(prom.addr, "/api/v1/alerts").unwrap();
    println!("alerts: {alerts}");
    assert!(
        alerts.contains(r#""alerts":[]"#),
        "a healthy cplb fires nothing: {alerts}"
    );
    // Every query of the Grafana dashboard is PromQL the real server accepts.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/cplb.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    for q in &queries {
        let path = format!("/api/v1/query?query={}", url_encode(&concrete(q)));
        let (status, body) = get(prom.addr, &path).unwrap();
        assert!(
            status == 200 && body.contains(r#""status":"success""#),
            "{q}: {status} {body}"
        );
    }
    println!("{} dashboard queries accepted by Prometheus", queries.len());
}
