//! What ships for operators: every cplb config passes `cplb --check` with
//! active `/readyz` checks on (and without them, the commented variant),
//! its checks take a stand-in master whose `/readyz` fails out, every pod
//! mounts the CA file its config names at that path, and the systemd unit
//! passes `systemd-analyze verify` and fits the config.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

use cplb::standin::ApiServer;
use cplb::standin::pki::Pki;

use common::shipped::{ca_file, with_test_ca};
use common::wait_until;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| Value::deserialize(de).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The DaemonSet's config, from its ConfigMap.
fn configmap_config() -> String {
    documents(&read("config/kubernetes/daemonset.yaml"))
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["cplb.yaml"].as_str())
        .expect("the ConfigMap holds cplb.yaml")
        .to_string()
}

/// Every shipped cplb config: (name, text).
fn configs() -> Vec<(String, String)> {
    vec![
        ("config/cplb.yaml".into(), read("config/cplb.yaml")),
        (
            "config/kubespray/cplb.yaml".into(),
            read("config/kubespray/cplb.yaml"),
        ),
        (
            "config/kubernetes/daemonset.yaml (ConfigMap)".into(),
            configmap_config(),
        ),
    ]
}

/// Every pod manifest with the config its pod runs: (manifest, config text).
fn pods() -> Vec<(&'static str, String)> {
    vec![
        (
            "config/kubernetes/static-pod.yaml",
            read("config/cplb.yaml"),
        ),
        (
            "config/kubernetes/static-pod-discovery.yaml",
            read("config/cplb.yaml"),
        ),
        ("config/kubernetes/daemonset.yaml", configmap_config()),
        (
            "config/kubespray/cplb-proxy.yaml",
            read("config/kubespray/cplb.yaml"),
        ),
    ]
}

/// `cplb --config <file> --check`, the binary.
fn check(dir: &Path, name: &str, text: &str) -> std::process::Output {
    let file = dir.join(name.replace(['/', ' ', '(', ')'], "_"));
    std::fs::write(&file, text).expect("temp dir is writable");
    Command::new(env!("CARGO_BIN_EXE_cplb"))
        .arg("--config")
        .arg(&file)
        .arg("--check")
        .output()
        .expect("cplb runs")
}

fn assert_check_passes(dir: &Path, name: &str, text: &str) {
    let out = check(dir, name, text);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test is successful"),
        "{name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_shipped_config_passes_check_with_readyz_checks_on() {
    let dir = common::process::temp_dir("shipped-check");
    for (name, text) in configs() {
        let ca = ca_file(&text).unwrap_or_else(|| panic!("{name}: no health_check.tls.ca_file"));
        assert!(
            ca.starts_with("/etc/kubernetes/") && ca.ends_with("/ca.crt"),
            "{name}: ca_file {ca} is not the cluster CA"
        );
        let text = with_test_ca(&text);
        assert_check_passes(&dir, &name, &text);

        let c = cplb::Config::parse(&text, Path::new(&name)).unwrap_or_else(|e| panic!("{e}"));
        let hc = c
            .health_check
            .unwrap_or_else(|| panic!("{name}: active checks are off"));
        assert_eq!(hc.mode, cplb::config::CheckMode::Https, "{name}");
        assert_eq!(hc.path, "/readyz", "{name}");
        assert!(!hc.tls.insecure_skip_verify, "{name}");
        // The one name in every kubeadm API server certificate, whatever
        // address the upstream is written with.
        assert_eq!(hc.tls.server_name.as_deref(), Some("kubernetes"), "{name}");
        assert!(hc.close_on_down, "{name}");
    }
}

#[test]
fn every_shipped_config_passes_check_without_active_checks() {
    // The commented variant: each config says how to go without active
    // checks (delete the section); what is left must still be valid.
    let dir = common::process::temp_dir("shipped-passive");
    for (name, text) in configs() {
        assert!(
            text.contains("Without active checks"),
            "{name}: the variant without active checks is not described"
        );
        let mut v: Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
        let removed = v
            .as_mapping_mut()
            .and_then(|m| m.remove("health_check"))
            .is_some();
        assert!(removed, "{name}: no health_check section");
        let passive = serde_yaml_ng::to_string(&v).expect("serialisable");
        assert_check_passes(&dir, &name, &passive);
    }
}

/// A shipped config in front of `upstreams`, with what a test must change:
/// loopback addresses on port 0, the stand-ins' CA, a short drain, and a
/// faster probe interval. Mode, path, server name, rise, fall and
/// close_on_down stay as shipped.
fn on_loopback(text: &str, upstreams: &[SocketAddr], ca: &Path) -> cplb::Config {
    let mut v: Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    v["listen"] = "127.0.0.1:0".into();
    v["admin"] = "127.0.0.1:0".into();
    v["shutdown_grace"] = "200ms".into();
    v["health_check"]["interval"] = "200ms".into();
    v["health_check"]["tls"]["ca_file"] = ca.display().to_string().into();
    let ups = v["upstreams"].as_sequence_mut().expect("upstreams");
    assert_eq!(ups.len(), upstreams.len(), "one stand-in per upstream");
    for (u, addr) in ups.iter_mut().zip(upstreams) {
        u["address"] = addr.to_string().into();
    }
    let text = serde_yaml_ng::to_string(&v).expect("serialisable");
    cplb::Config::parse(&text, Path::new("shipped.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn up(proxy: &common::Proxy, addr: SocketAddr) -> f64 {
    proxy
        .scrape()
        .get("cplb_upstream_up", &[("upstream", &addr.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_checks_take_a_master_whose_readyz_fails_out() {
    // Stand-in API servers with a kubeadm-like certificate (it names
    // `kubernetes`), so the shipped server_name and path are what is tried.
    let pki = Pki::new("kubernetes").expect("CA");
    let dir = common::process::temp_dir("shipped-e2e");
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, pki.ca_pem()).expect("temp dir is writable");
    for (name, text) in configs() {
        let mut masters = Vec::new();
        for i in 0..3 {
            let m = ApiServer::start(&format!("master{i}"), &pki, "127.0.0.1:0".parse().unwrap())
                .await
                .expect("stand-in starts");
            masters.push(m);
        }
        let addrs: Vec<SocketAddr> = masters.iter().map(|m| m.addr).collect();
        let proxy = common::Proxy::start(on_loopback(&text, &addrs, &ca)).await;
        let first = addrs[0];
        wait_until(&format!("{name}: /readyz probes pass"), || {
            masters[0].requests() >= 2
                && proxy.scrape().get(
                    "cplb_health_checks_total",
                    &[
                        ("upstream", &first.to_string()),
                        ("result", "success"),
                        ("reason", "none"),
                    ],
                ) >= 2.0
        })
        .await;
        assert_eq!(up(&proxy, first), 1.0, "{name}");

        masters[0].set_ready(false);
        wait_until(&format!("{name}: master0 down"), || {
            up(&proxy, first) == 0.0
        })
        .await;
        for a in &addrs[1..] {
            assert_eq!(up(&proxy, *a), 1.0, "{name}: {a}");
        }
        masters[0].set_ready(true);
        wait_until(&format!("{name}: master0 back"), || {
            up(&proxy, first) == 1.0
        })
        .await;
        proxy.shutdown().await;
    }
}

/// The pod spec of a Pod or of a DaemonSet's template.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "DaemonSet" => Some(&doc["spec"]["template"]["spec"]),
        _ => None,
    }
}

#[test]
fn every_pod_mounts_the_ca_file_its_config_names() {
    for (manifest, config) in pods() {
        let ca = ca_file(&config).unwrap_or_else(|| panic!("{manifest}: no ca_file"));
        let docs = documents(&read(manifest));
        let spec = docs
            .iter()
            .find_map(pod_spec)
            .unwrap_or_else(|| panic!("{manifest}: no pod"));
        let containers = spec["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{manifest}");
        let mounts = containers[0]["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts");
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == ca.as_str())
            .unwrap_or_else(|| panic!("{manifest}: nothing is mounted at {ca}"));
        assert_eq!(mount["readOnly"], true, "{manifest}");
        assert!(mount.get("subPath").is_none(), "{manifest}");
        let volumes = spec["volumes"].as_sequence().expect("volumes");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{manifest}: the CA volume exists"));
        // The host's file at the same path, and only that file: the
        // directory beside it holds ca.key on control-plane nodes.
        assert_eq!(volume["hostPath"]["path"], ca.as_str(), "{manifest}");
        assert_eq!(volume["hostPath"]["type"], "File", "{manifest}");
        let dir = Path::new(&ca).parent().expect("absolute path");
        for v in volumes {
            if let Some(p) = v["hostPath"]["path"].as_str() {
                assert!(
                    !dir.starts_with(p),
                    "{manifest}: volume {p} exposes the directory of {ca}"
                );
            }
        }
    }
}

// --- systemd ----------------------------------------------------------------

const UNIT: &str = "config/systemd/cplb.service";

/// `key=value` lines of one `[section]`, comments and blanks left out.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn value<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let test = "systemd_unit_passes_systemd_analyze_verify";
    if !common::require::tool(test, "systemd-analyze", "systemd") {
        return;
    }
    // verify also checks that ExecStart's binary exists: point it at the
    // one cargo built, the only change to the unit.
    let text = read(UNIT);
    let installed = "ExecStart=/usr/local/bin/cplb ";
    assert_eq!(text.matches(installed).count(), 1, "{UNIT}: {installed}");
    let text = text.replacen(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_cplb")),
        1,
    );
    let dir: PathBuf = common::process::temp_dir("shipped-unit");
    let unit = dir.join("cplb.service");
    std::fs::write(&unit, text).expect("temp dir is writable");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .current_dir(&dir)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings (an unknown key, a bad value) leave the status 0: any line
    // about the unit counts.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("cplb")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {UNIT}: {:?}\n{stderr}",
        out.status
    );
}

#[test]
fn systemd_unit_fits_the_shipped_config() {
    let text = read(UNIT);
    let s = unit_section(&text, "Service");
    let config = common::shipped::parse(&read("config/cplb.yaml"), Path::new("config/cplb.yaml"));

    assert_eq!(
        value(&s, "ExecStart"),
        Some("/usr/local/bin/cplb --config /etc/cplb/cplb.yaml")
    );
    assert_eq!(value(&s, "ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    assert_eq!(value(&s, "Restart"), Some("always"));
    // cplb sends no sd_notify readiness, so not Type=notify.
    assert_eq!(value(&s, "Type"), Some("exec"));
    assert_eq!(value(&s, "KillSignal"), Some("SIGTERM"));

    let stop = humantime::parse_duration(value(&s, "TimeoutStopSec").expect("TimeoutStopSec"))
        .expect("a duration");
    assert!(
        stop > config.shutdown_grace,
        "systemd kills cplb ({stop:?}) before its drain ends ({:?})",
        config.shutdown_grace
    );

    // Two sockets per client, and up to four pipe ends while bytes move.
    let nofile: usize = value(&s, "LimitNOFILE")
        .expect("LimitNOFILE")
        .parse()
        .expect("a number");
    let need = 6 * config.max_connections.get();
    assert!(nofile >= need, "LimitNOFILE {nofile} < {need}");

    // Unprivileged: every port is above 1024, so no capability at all.
    let ports = config.listen.iter().chain(config.admin.iter());
    assert!(ports.map(|a| a.port()).all(|p| p >= 1024));
    assert_eq!(value(&s, "AmbientCapabilities"), Some(""));
    assert_eq!(value(&s, "CapabilityBoundingSet"), Some(""));
    // A uid of its own: the user cplb (uid 58443 where the host has made
    // it, as in the pods), else one systemd allocates for this unit alone.
    assert_eq!(value(&s, "DynamicUser"), Some("yes"));
    assert_eq!(value(&s, "User"), Some("cplb"));
    assert_eq!(value(&s, "ProtectSystem"), Some("strict"));
    assert_eq!(value(&s, "NoNewPrivileges"), Some("yes"));
}
