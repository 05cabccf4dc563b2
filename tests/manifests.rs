//! The container and Kubernetes files: kubectl reads every manifest, the
//! fields a node-local API proxy needs are there, the cplb configs shipped
//! with them are valid, and the Dockerfile builds the way CI does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The uid and gid cplb runs as in every shipped image and pod: its own,
/// not distroless' nonroot 65532 (docs/deployment.md).
const CPLB_UID: u32 = 58443;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file (`---` separated).
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| Value::deserialize(de).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn is_object(doc: &Value) -> bool {
    doc["apiVersion"].is_string() && doc["kind"].is_string()
}

/// The YAML files under the manifest directories, sorted.
fn yaml_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["config/kubernetes", "config/kubespray"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("directory exists") {
            let path = entry.expect("readable entry").path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The files holding Kubernetes objects, with their objects.
fn manifests() -> Vec<(PathBuf, Vec<Value>)> {
    yaml_files()
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            let docs = documents(&text);
            docs.iter().any(is_object).then_some((path, docs))
        })
        .collect()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn the_manifests_are_the_expected_objects() {
    let got: Vec<(String, Vec<String>)> = manifests()
        .iter()
        .map(|(path, docs)| {
            let objects = docs
                .iter()
                .map(|d| {
                    assert!(
                        is_object(d),
                        "{}: a document that is not an object",
                        rel(path)
                    );
                    format!(
                        "{}/{}",
                        d["kind"].as_str().unwrap_or_default().to_lowercase(),
                        d["metadata"]["name"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            (rel(path), objects)
        })
        .collect();
    let want = [
        (
            "config/kubernetes/daemonset.yaml",
            vec!["configmap/cplb", "daemonset/cplb"],
        ),
        (
            "config/kubernetes/rbac.yaml",
            vec!["clusterrole/cplb-discovery", "rolebinding/cplb-discovery"],
        ),
        (
            "config/kubernetes/static-pod-discovery.yaml",
            vec!["pod/cplb"],
        ),
        ("config/kubernetes/static-pod-kernel.yaml", vec!["pod/cplb"]),
        ("config/kubernetes/static-pod.yaml", vec!["pod/cplb"]),
        ("config/kubespray/cplb-proxy.yaml", vec!["pod/cplb-proxy"]),
    ];
    let want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(p, o)| (p.to_string(), o.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(got, want);
}

// --- kubectl -------------------------------------------------------------

/// A kubeconfig that points nowhere, so kubectl never talks to a real
/// cluster from a developer's environment. The token keeps kubectl from
/// prompting for a user name.
fn dummy_kubeconfig() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("cplb-manifests-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: none, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: none, user: {token: none}}]\n\
         contexts: [{name: none, context: {cluster: none, user: none}}]\n\
         current-context: none\n",
    )
    .expect("temp dir is writable");
    path
}

fn kubectl(kubeconfig: &Path, args: &[&str], file: &Path) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .arg("-f")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("kubectl runs (it is installed where the tests run)")
}

/// `kubectl apply --dry-run=client` still asks a server for its API groups
/// to map kinds to resources, so without a cluster it fails before reading
/// the objects. Then `kubectl label --local --dry-run=client` does the same
/// offline: it decodes every object (YAML syntax, apiVersion, kind) and
/// prints its name, without the schema (which only a server has).
fn kubectl_names(kubeconfig: &Path, file: &Path) -> Result<Vec<String>, String> {
    let apply = kubectl(
        kubeconfig,
        &[
            "apply",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "name",
        ],
        file,
    );
    let out = if apply.status.success() {
        apply
    } else {
        let stderr = String::from_utf8_lossy(&apply.stderr);
        let no_server = stderr.contains("couldn't get current server API group list")
            || stderr.contains("connection refused");
        if !no_server {
            return Err(format!("kubectl apply: {stderr}"));
        }
        let local = kubectl(
            kubeconfig,
            &[
                "label",
                "--local",
                "--dry-run=client",
                "cplb.test/checked=true",
                "-o",
                "name",
            ],
            file,
        );
        if !local.status.success() {
            return Err(format!(
                "kubectl label --local: {}",
                String::from_utf8_lossy(&local.stderr)
            ));
        }
        local
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn kubectl_reads_every_manifest() {
    // Debian ships kubectl as kubernetes-client; Kubernetes' own apt
    // repository (pkgs.k8s.io) and the Google Cloud SDK call it kubectl.
    if !common::require::tool(
        "kubectl_reads_every_manifest",
        "kubectl",
        "kubernetes-client",
    ) {
        return;
    }
    let kubeconfig = dummy_kubeconfig();
    let files = manifests();
    assert!(!files.is_empty());
    for (path, docs) in &files {
        let want: Vec<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or_default().to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let got = kubectl_names(&kubeconfig, path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)));
        // kubectl prints "kind.group/name" for kinds outside the core group.
        let got: Vec<String> = got
            .into_iter()
            .map(|n| match n.split_once('/') {
                Some((kind, name)) => {
                    format!("{}/{name}", kind.split('.').next().unwrap_or(kind))
                }
                None => n,
            })
            .collect();
        assert_eq!(got, want, "{}", rel(path));
    }

    // The check can fail: an object without a kind is refused.
    let broken =
        std::env::temp_dir().join(format!("cplb-manifests-{}-broken.yaml", std::process::id()));
    std::fs::write(&broken, "apiVersion: v1\nmetadata: {name: x}\n").expect("writable");
    let result = kubectl_names(&kubeconfig, &broken);
    let _ = std::fs::remove_file(&broken);
    let _ = std::fs::remove_file(&kubeconfig);
    assert!(result.is_err(), "{result:?}");
}

// --- fields ---------------------------------------------------------------

/// The pod spec of a Pod or of a workload's template.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "DaemonSet" | "Deployment" => Some(&doc["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// The cplb config a pod runs: the ConfigMap's cplb.yaml for a DaemonSet,
/// the shipped file for a static pod (mounted from the host's /etc/cplb).
fn config_for(path: &Path, docs: &[Value]) -> cplb::Config {
    let text = match rel(path).as_str() {
        "config/kubernetes/daemonset.yaml" => docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["cplb.yaml"].as_str())
            .expect("the ConfigMap holds cplb.yaml")
            .to_string(),
        "config/kubernetes/static-pod.yaml" => read("config/cplb.yaml"),
        "config/kubernetes/static-pod-discovery.yaml" => {
            with_section(&read("config/cplb.yaml"), "discovery")
        }
        "config/kubernetes/static-pod-kernel.yaml" => {
            with_section(&read("config/cplb.yaml"), "dataplane")
        }
        "config/kubespray/cplb-proxy.yaml" => read("config/kubespray/cplb.yaml"),
        other => panic!("which config does {other} run?"),
    };
    common::shipped::parse(&text, path)
}

/// config/cplb.yaml with its commented `name:` section (`discovery`,
/// `dataplane`) turned on, as the matching static pod's comment tells the
/// operator to do.
fn with_section(text: &str, name: &str) -> String {
    let (head, tail) = text
        .split_once(&format!("\n# {name}:\n"))
        .unwrap_or_else(|| panic!("config/cplb.yaml offers a commented {name}: section"));
    let section: String = std::iter::once(format!("{name}:"))
        .chain(
            tail.lines()
                .map_while(|l| l.strip_prefix("# "))
                .map(String::from),
        )
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{head}\n{section}")
}

/// The container's mount paths that are not read-only.
fn writable_mounts(c: &Value) -> Vec<&str> {
    c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|m| m["readOnly"] != true)
        .filter_map(|m| m["mountPath"].as_str())
        .collect()
}

/// The kernel static pod's privileges and mounts (docs/kernel.md,
/// docs/deployment.md): uid 0 (root owns the node's 0700 bpffs), exactly
/// CAP_BPF and CAP_NET_ADMIN added, seccomp Unconfined (the runtime's
/// default profile allows bpf() only with CAP_SYS_ADMIN), the node's
/// cgroup2 root read-only at `dataplane.cgroup` and its bpffs writable at
/// `dataplane.bpffs`, the only writable mount; no credential of the node.
fn check_kernel(file: &str, spec: &Value, c: &Value, config: &cplb::Config) {
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    assert!(sc.get("privileged").is_none_or(|p| *p == false), "{file}");
    assert_eq!(sc["runAsUser"], 0, "{file}: root owns /sys/fs/bpf");
    assert_eq!(sc["runAsGroup"], 0, "{file}");
    assert_eq!(sc["runAsNonRoot"], false, "{file}");
    assert_eq!(
        sc["capabilities"]["drop"],
        Value::from(vec!["ALL"]),
        "{file}"
    );
    let add: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(add, ["BPF", "NET_ADMIN"], "{file}");
    assert_eq!(sc["seccompProfile"]["type"], "Unconfined", "{file}");
    // The docs name each privilege.
    for doc in ["docs/kernel.md", "docs/deployment.md"] {
        let text = read(doc);
        for cap in &add {
            assert!(
                text.contains(&format!("CAP_{cap}")),
                "{doc} names CAP_{cap}"
            );
        }
    }
    assert!(
        read("docs/deployment.md").contains("seccompProfile: Unconfined"),
        "docs/deployment.md says why seccomp is unconfined"
    );
    let dp = &config.dataplane;
    assert_eq!(dp.mode, cplb::kernel::config::Mode::Kernel, "{file}");
    let cgroup = dp
        .cgroup
        .as_ref()
        .expect("dataplane.cgroup is set: the container's own cgroup2 mount is not the node's");
    let mounted = |host: &str| {
        let v = spec["volumes"]
            .as_sequence()
            .and_then(|vs| vs.iter().find(|v| v["hostPath"]["path"] == host))
            .unwrap_or_else(|| panic!("{file}: a hostPath volume for {host}"));
        assert_eq!(v["hostPath"]["type"], "Directory", "{file}: {host}");
        c["volumeMounts"]
            .as_sequence()
            .and_then(|ms| ms.iter().find(|m| m["name"] == v["name"]))
            .unwrap_or_else(|| panic!("{file}: {host} is mounted"))
    };
    let m = mounted("/sys/fs/cgroup");
    assert_eq!(
        m["mountPath"].as_str().map(Path::new),
        Some(cgroup.as_path()),
        "{file}"
    );
    assert_eq!(m["readOnly"], true, "{file}: cplb only opens the cgroup");
    let m = mounted("/sys/fs/bpf");
    assert_eq!(
        m["mountPath"].as_str().map(Path::new),
        Some(dp.bpffs.as_path()),
        "{file}"
    );
    let writable = writable_mounts(c);
    assert_eq!(writable, [dp.bpffs.to_str().unwrap()], "{file}");
    for path in ["/etc/kubernetes/kubelet.conf", "/var/lib/kubelet/pki"] {
        assert!(
            !c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == path),
            "{file}: mounts {path}"
        );
    }
}

/// The security context and the node's credentials, by whether the pod
/// runs discovery: root with no capability where it must read kubeadm's
/// root-owned 0600 kubelet.conf and client certificate and write
/// /var/lib/cplb; cplb's own non-root uid, with no credential mounted,
/// everywhere else.
fn check_identity(file: &str, spec: &Value, c: &Value, config: &cplb::Config) {
    if config.dataplane.mode != cplb::kernel::config::Mode::Proxy {
        return check_kernel(file, spec, c, config);
    }
    let sc = &c["securityContext"];
    assert!(
        sc.get("seccompProfile").is_none(),
        "{file}: only kernel mode needs it"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    let drop: Vec<&str> = sc["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(drop, ["ALL"], "{file}");
    assert!(sc["capabilities"].get("add").is_none(), "{file}");
    assert!(sc.get("privileged").is_none_or(|p| *p == false), "{file}");
    let mount = |path: &str| {
        c["volumeMounts"]
            .as_sequence()
            .and_then(|ms| ms.iter().find(|m| m["mountPath"] == path))
    };
    let credentials = [
        ("/etc/kubernetes/kubelet.conf", true, "File"),
        ("/var/lib/kubelet/pki", true, "Directory"),
        ("/var/lib/cplb", false, "DirectoryOrCreate"),
    ];
    let Some(d) = &config.discovery else {
        assert_eq!(sc["runAsNonRoot"], true, "{file}");
        assert_eq!(sc["runAsUser"], CPLB_UID, "{file}");
        assert_eq!(sc["runAsGroup"], CPLB_UID, "{file}");
        for (path, _, _) in credentials {
            assert!(
                mount(path).is_none(),
                "{file}: mounts {path} without discovery"
            );
        }
        return;
    };
    assert_eq!(
        sc["runAsUser"], 0,
        "{file}: root reads kubeadm's 0600 files"
    );
    assert_eq!(sc["runAsGroup"], 0, "{file}");
    assert_eq!(sc["runAsNonRoot"], false, "{file}");
    for (path, read_only, kind) in credentials {
        let m = mount(path).unwrap_or_else(|| panic!("{file}: {path} is mounted"));
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{file}: {path}"
        );
        let v = spec["volumes"]
            .as_sequence()
            .and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]))
            .unwrap_or_else(|| panic!("{file}: the volume for {path}"));
        assert_eq!(v["hostPath"]["path"], path, "{file}");
        assert_eq!(v["hostPath"]["type"], kind, "{file}: {path}");
    }
    // The config's paths are the mounted ones.
    assert_eq!(
        d.kubeconfig,
        Path::new("/etc/kubernetes/kubelet.conf"),
        "{file}"
    );
    assert_eq!(
        d.state_file.parent(),
        Some(Path::new("/var/lib/cplb")),
        "{file}"
    );
    // The only writable mount is the state file's directory.
    let writable = writable_mounts(c);
    assert_eq!(writable, ["/var/lib/cplb"], "{file}");
}

#[test]
fn daemonset_updates_surge_before_the_old_pod_drains() {
    let docs = documents(&read("config/kubernetes/daemonset.yaml"));
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    // Surge needs both pods on the node at once: no hostPort to collide
    // on (cplb shares its ports through SO_REUSEPORT, same uid).
    let spec = pod_spec(ds).expect("pod spec");
    for c in spec["containers"].as_sequence().expect("containers") {
        assert!(
            c.get("ports").is_none(),
            "a hostPort would block the surge pod"
        );
    }
}

#[test]
fn pods_have_what_a_node_local_proxy_needs() {
    let (mut pods, mut discovery_pods, mut kernel_pods) = (0, 0, 0);
    for (path, docs) in manifests() {
        let file = rel(&path);
        for doc in &docs {
            let Some(spec) = pod_spec(doc) else { continue };
            pods += 1;
            assert_eq!(doc["metadata"]["namespace"], "kube-system", "{file}");
            assert_eq!(spec["hostNetwork"], true, "{file}");
            assert_eq!(spec["priorityClassName"], "system-node-critical", "{file}");

            let config = config_for(&path, &docs);
            let grace = spec["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace period set");
            assert!(
                Duration::from_secs(grace) > config.shutdown_grace,
                "{file}: the kubelet kills cplb ({grace}s) before its drain ends ({:?})",
                config.shutdown_grace
            );
            let admin = config.admin.expect("the probes need the admin endpoint");
            assert_eq!(admin.to_string(), "127.0.0.1:8081", "{file}");

            let containers = spec["containers"].as_sequence().expect("containers");
            assert_eq!(containers.len(), 1, "{file}");
            let c = &containers[0];
            check_identity(&file, spec, c, &config);
            if config.discovery.is_some() {
                discovery_pods += 1;
            }
            if config.dataplane.mode != cplb::kernel::config::Mode::Proxy {
                kernel_pods += 1;
            }
            let args: Vec<&str> = c["args"]
                .as_sequence()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(args, ["--config", "/etc/cplb/cplb.yaml"], "{file}");

            let env = c["env"].as_sequence().expect("env");
            assert!(
                env.iter().any(|e| e["name"] == "NODE_NAME"
                    && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
                "{file}: NODE_NAME from spec.nodeName"
            );

            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{file} {probe}");
                assert_eq!(get["port"], 8081, "{file} {probe}");
                assert_eq!(get["host"], "127.0.0.1", "{file} {probe}");
            }

            assert_eq!(c["resources"]["requests"]["cpu"], "25m", "{file}");
            assert_eq!(c["resources"]["requests"]["memory"], "32M", "{file}");

            // The config directory, read-only, and never through subPath
            // (a subPath mount does not see ConfigMap updates).
            let mounts = c["volumeMounts"].as_sequence().expect("volumeMounts");
            let mount = mounts
                .iter()
                .find(|m| m["mountPath"] == "/etc/cplb")
                .unwrap_or_else(|| panic!("{file}: /etc/cplb is mounted"));
            assert_eq!(mount["readOnly"], true, "{file}");
            assert!(mount.get("subPath").is_none(), "{file}");
            let volume = spec["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{file}: the mounted volume exists"));
            if doc["kind"] == "Pod" {
                assert_eq!(volume["hostPath"]["path"], "/etc/cplb", "{file}");
            } else {
                let cm = docs
                    .iter()
                    .find(|d| d["kind"] == "ConfigMap")
                    .expect("ConfigMap");
                assert_eq!(
                    volume["configMap"]["name"], cm["metadata"]["name"],
                    "{file}"
                );
                assert_eq!(cm["metadata"]["namespace"], "kube-system", "{file}");
            }
        }
    }
    assert_eq!(
        (pods, discovery_pods, kernel_pods),
        (5, 1, 1),
        "static pods (proxy mode with and without discovery, kernel mode), DaemonSet, kubespray static pod"
    );
}

#[test]
fn every_shipped_cplb_config_is_valid() {
    // Every YAML beside the manifests that is not a Kubernetes object is a
    // cplb config, and every ConfigMap's cplb.yaml too.
    let mut checked = Vec::new();
    for path in yaml_files() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let docs = documents(&text);
        if docs.iter().any(is_object) {
            for cm in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
                let embedded = cm["data"]["cplb.yaml"].as_str().expect("cplb.yaml key");
                common::shipped::parse(embedded, &path);
                checked.push(format!("{} (ConfigMap)", rel(&path)));
            }
        } else {
            common::shipped::parse(&text, &path);
            checked.push(rel(&path));
        }
    }
    assert_eq!(
        checked,
        [
            "config/kubernetes/daemonset.yaml (ConfigMap)",
            "config/kubespray/cplb.yaml"
        ]
    );
}

#[test]
fn kubespray_config_keeps_nginx_proxy_choices() {
    let path = root().join("config/kubespray/cplb.yaml");
    let c = common::shipped::parse(&read("config/kubespray/cplb.yaml"), &path);
    // IPv4 only: kubespray adds [::1] only with IPv6, and a node with IPv6
    // disabled must not depend on cplb skipping it.
    assert_eq!(c.listen, ["127.0.0.1:6443".parse().unwrap()]);
    assert!(
        read("config/kubespray/cplb.yaml").contains("# - \"[::1]:6443\""),
        "the IPv6 listen line is there, commented out"
    );
    assert_eq!(c.admin, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(c.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.workers.get(), 2);
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.hash.key, cplb::config::HashKey::Node);
    // nginx-proxy set no weight or failure accounting: nginx's defaults.
    assert!(c.upstreams.iter().all(|u| u.weight.get() == 1
        && u.max_fails == 1
        && u.fail_timeout == Duration::from_secs(10)));
}

// --- Dockerfile -------------------------------------------------------------

/// Instructions (keyword, rest) with comments and blank lines removed,
/// and the global `ARG`s' defaults put in for `${NAME}` (what a build
/// without `--build-arg` uses).
fn dockerfile() -> Vec<(String, String)> {
    let ins: Vec<(String, String)> = read("Dockerfile")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (k.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let args: Vec<(String, String)> = ins
        .iter()
        .take_while(|(k, _)| k == "ARG")
        .filter_map(|(_, r)| r.split_once('='))
        .map(|(n, v)| (format!("${{{n}}}"), v.to_string()))
        .collect();
    ins.into_iter()
        .filter(|(k, _)| k != "ARG")
        .map(|(k, mut r)| {
            for (name, value) in &args {
                r = r.replace(name, value);
            }
            (k, r)
        })
        .collect()
}

#[test]
fn dockerfile_builds_like_ci() {
    let ins = dockerfile();
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(froms.len(), 3, "{froms:?}");

    // Build stage: the official image on the stable channel. CI uses the
    // stable toolchain and there is no rust-toolchain file to say otherwise.
    let (image, stage) = froms[0].split_once(" AS ").expect("a named build stage");
    let tag = image
        .strip_prefix("rust:")
        .expect("the official rust image");
    let version = tag.split('-').next().unwrap_or_default();
    assert!(
        version == "1" || version.starts_with("1."),
        "rust:{tag} is not a stable 1.x tag"
    );
    assert!(!tag.contains("nightly") && !tag.contains("beta"), "{tag}");
    for f in ["rust-toolchain", "rust-toolchain.toml"] {
        assert!(!root().join(f).exists(), "{f} would pin another toolchain");
    }

    let runs: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    let build = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build step");
    let flags: Vec<&str> = build.split_whitespace().collect();
    assert!(
        flags.contains(&"--release") && flags.contains(&"--locked"),
        "{build}"
    );
    // The image is the product without its tools, with its kernel programs.
    assert!(flags.contains(&"--no-default-features"), "{build}");
    assert!(flags.contains(&"CPLB_BPF=require"), "{build}");
    // CI builds with the lock file too.
    assert!(read(".ci/run").contains("--locked"));

    // What cargo needs to read Cargo.toml is in the build context.
    let copies: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, r)| r.as_str())
        .collect();
    for needed in [
        "Cargo.toml Cargo.lock build.rs",
        "src src",
        "benches benches",
        "bpf bpf",
    ] {
        assert!(
            copies.iter().any(|c| c.contains(needed)),
            "COPY {needed}: {copies:?}"
        );
    }

    // The binary: the build stage's by default (BINARY_FROM).
    assert_eq!(froms[1], format!("{stage} AS binary"));
    // Runtime stage: distroless, the binary and the config only.
    assert_eq!(froms[2], "gcr.io/distroless/cc-debian12 AS runtime");
    let runtime: Vec<&(String, String)> = ins
        .iter()
        .skip_while(|(k, r)| !(k == "FROM" && r == froms[2]))
        .collect();
    let expect = [
        (
            "COPY",
            "--from=binary /src/target/release/cplb /usr/local/bin/cplb".to_string(),
        ),
        ("COPY", "config/cplb.yaml /etc/cplb/cplb.yaml".to_string()),
        // cplb's own uid (not distroless' shared nonroot 65532).
        ("USER", format!("{CPLB_UID}:{CPLB_UID}")),
        ("ENTRYPOINT", "[\"/usr/local/bin/cplb\"]".to_string()),
        ("CMD", "[\"--config\", \"/etc/cplb/cplb.yaml\"]".to_string()),
    ];
    let got: Vec<(&str, String)> = runtime[1..]
        .iter()
        .map(|(k, r)| (k.as_str(), r.clone()))
        .collect();
    assert_eq!(got, expect);

    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(
        ignore.iter().any(|l| l == "target") && ignore.iter().any(|l| l == ".git"),
        "{ignore:?}"
    );
}

#[test]
fn rbac_lets_nodes_watch_endpointslices_in_default() {
    let docs = documents(&read("config/kubernetes/rbac.yaml"));
    let role = &docs[0];
    let rules = role["rules"].as_sequence().expect("rules");
    let grants = |verb: &str| {
        rules.iter().any(|r| {
            let has = |k: &str, v: &str| {
                r[k].as_sequence()
                    .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(v)))
            };
            has("apiGroups", "discovery.k8s.io")
                && has("resources", "endpointslices")
                && has("verbs", verb)
        })
    };
    for verb in ["get", "list", "watch"] {
        assert!(
            grants(verb),
            "the ClusterRole grants {verb} on endpointslices"
        );
    }
    assert!(!grants("create") && !grants("*"), "read only");
    let binding = &docs[1];
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some("default"));
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("ClusterRole"));
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"].as_str(), Some("Group"));
    assert_eq!(subject["name"].as_str(), Some("system:nodes"));
}
