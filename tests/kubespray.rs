//! config/kubespray's templates rendered as kubespray would render them:
//! the real jinja2 (Ansible's settings: trim_blocks, undefined variables an
//! error), against kubespray's defaults (tests/fixtures/kubespray), IPv6 on
//! and off, the sample inventory's ports and none; each result passes
//! `cplb --check`, and the pod probes and mounts what its config names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::shipped::with_test_ca;
use serde_yaml_ng::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// python3 with jinja2 and yaml, or a skip naming the packages.
fn have_jinja2(test: &str) -> bool {
    if !common::require::tool(test, "python3", "python3-minimal") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import jinja2, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || common::require::missing(
        test,
        "needs python3's jinja2 and yaml (Debian packages python3-jinja2 python3-yaml: apt-get install python3-jinja2 python3-yaml)",
    )
}

/// Renders every template into a fresh directory: (cplb.yaml, cplb-proxy.yaml).
fn render(case: &serde_json::Value) -> (String, String) {
    let out = common::process::temp_dir("kubespray");
    let fixtures = root().join("tests/fixtures/kubespray");
    let run = Command::new("python3")
        .arg(fixtures.join("render.py"))
        .arg(fixtures.join("defaults.yml"))
        .arg(case.to_string())
        .arg(root().join("config/kubespray"))
        .arg(&out)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    (read("cplb.yaml"), read("cplb-proxy.yaml"))
}

/// `cplb --check` on the rendered config, its CA pointed at a test CA.
fn check(yaml: &str) -> cplb::Config {
    let path: PathBuf = common::process::temp_dir("kubespray-check").join("cplb.yaml");
    std::fs::write(&path, with_test_ca(yaml)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "{said}\n{yaml}");
    assert!(said.contains("test is successful"), "{said}");
    cplb::Config::load(&path).unwrap()
}

fn strings(c: &cplb::Config) -> (Vec<String>, Vec<String>) {
    (
        c.listen.iter().map(|a| a.to_string()).collect(),
        c.upstreams.iter().map(|u| u.address.clone()).collect(),
    )
}

/// What the pod manifest must agree on with its config: the probes ask the
/// admin port, and the CA mounted is the config's `ca_file`.
fn check_pod(manifest: &str, config: &cplb::Config, ca_file: &str) -> Value {
    let pod: Value = serde_yaml_ng::from_str(manifest).expect("the manifest is YAML");
    assert_eq!(pod["kind"], "Pod");
    let c = &pod["spec"]["containers"][0];
    let admin = config.admin.expect("admin on").port();
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], u64::from(admin), "{probe}");
        assert_eq!(c[probe]["httpGet"]["host"], "127.0.0.1", "{probe}");
    }
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cluster-ca")
        .expect("the CA is mounted");
    assert_eq!(mount["mountPath"], ca_file);
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "cluster-ca")
        .expect("the CA volume");
    assert_eq!(volume["hostPath"]["path"], ca_file);
    pod
}

const MASTERS: [(&str, &str); 3] = [
    ("cp-1", "10.0.0.1"),
    ("cp-2", "10.0.0.2"),
    ("cp-3", "10.0.0.3"),
];

fn masters(list: &[(&str, &str)]) -> serde_json::Value {
    list.iter()
        .map(|(h, ip)| (h.to_string(), serde_json::json!(ip)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn kubespray_templates_render_to_configs_cplb_accepts() {
    let test = "kubespray_templates_render_to_configs_cplb_accepts";
    if !have_jinja2(test) {
        return;
    }
    // kubespray's own defaults: no loadbalancer_apiserver_port and no
    // healthcheck port (the sample inventory sets them), IPv6 off.
    let (yaml, manifest) = render(&serde_json::json!({
        "unset": ["loadbalancer_apiserver_port", "loadbalancer_apiserver_healthcheck_port"],
        "control_plane": masters(&MASTERS),
    }));
    let c = check(&yaml);
    assert_eq!(
        strings(&c),
        (
            vec!["127.0.0.1:6443".to_string()],
            MASTERS.iter().map(|(_, ip)| format!("{ip}:6443")).collect()
        )
    );
    assert_eq!(
        c.admin.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8081")
    );
    check_pod(&manifest, &c, "/etc/kubernetes/ssl/ca.crt");

    // The sample inventory, IPv6 off: the shipped files, exactly.
    let (yaml, manifest) = render(&serde_json::json!({ "control_plane": masters(&MASTERS) }));
    let mut rendered = check(&yaml);
    let path = root().join("config/kubespray/cplb.yaml");
    let mut shipped = common::shipped::parse(&std::fs::read_to_string(&path).unwrap(), &path);
    for c in [&mut rendered, &mut shipped] {
        c.source = None;
        c.source_text = None;
        if let Some(hc) = c.health_check.as_mut() {
            hc.tls.ca_file = None;
        }
    }
    assert_eq!(
        rendered, shipped,
        "cplb.yaml.j2 renders config/kubespray/cplb.yaml"
    );
    let shipped_pod: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("config/kubespray/cplb-proxy.yaml")).unwrap(),
    )
    .unwrap();
    let pod = check_pod(&manifest, &rendered, "/etc/kubernetes/ssl/ca.crt");
    assert_eq!(
        pod, shipped_pod,
        "cplb-proxy.manifest.j2 renders cplb-proxy.yaml"
    );

    // IPv6 on, as kubespray turns it on (enable_dual_stack_networks, from
    // which ipv6_stack defaults): [::1] added, an IPv6 master bracketed.
    let (yaml, manifest) = render(&serde_json::json!({
        "vars": {"enable_dual_stack_networks": true},
        "control_plane": masters(&[("cp-1", "10.0.0.1"), ("cp-2", "fd00::2")]),
    }));
    let c = check(&yaml);
    assert_eq!(
        strings(&c),
        (
            vec!["127.0.0.1:6443".to_string(), "[::1]:6443".to_string()],
            vec!["10.0.0.1:6443".to_string(), "[fd00::2]:6443".to_string()]
        )
    );
    check_pod(&manifest, &c, "/etc/kubernetes/ssl/ca.crt");

    // ipv6_stack set directly, and every port and directory moved.
    let (yaml, manifest) = render(&serde_json::json!({
        "vars": {
            "ipv6_stack": true,
            "loadbalancer_apiserver_port": 8383,
            "kube_apiserver_port": 6444,
            "loadbalancer_apiserver_healthcheck_port": 8082,
            "kube_config_dir": "/etc/k8s",
        },
        "control_plane": masters(&MASTERS),
    }));
    let c = check(&yaml);
    assert_eq!(
        strings(&c),
        (
            vec!["127.0.0.1:8383".to_string(), "[::1]:8383".to_string()],
            MASTERS.iter().map(|(_, ip)| format!("{ip}:6444")).collect()
        )
    );
    assert_eq!(
        c.admin.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8082")
    );
    check_pod(&manifest, &c, "/etc/k8s/ssl/ca.crt");

    // A variable the templates use and kubespray does not define is an
    // error, not an empty string: the renderer is strict, so this test can fail.
    let fixtures = root().join("tests/fixtures/kubespray");
    let out = Command::new("python3")
        .arg(fixtures.join("render.py"))
        .arg(fixtures.join("defaults.yml"))
        .arg(serde_json::json!({"unset": ["kube_apiserver_port"], "control_plane": masters(&MASTERS)}).to_string())
        .arg(root().join("config/kubespray"))
        .arg(common::process::temp_dir("kubespray-undefined"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kube_apiserver_port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
