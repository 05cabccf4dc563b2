//! The image in kernel mode, run on a real engine (podman with runc) as
//! config/kubernetes/static-pod-kernel.yaml runs it: the user, the added
//! capabilities, the read-only root and the mounts are read from the
//! manifest. The node's cgroup2 root is stood in for by a cgroup of the
//! test's own (never the machine's root), holding only the test's client
//! processes, and the node's bpffs by a private one, mounted 0700 as
//! systemd mounts /sys/fs/bpf.
//!
//! Shown: each privilege the manifest adds is needed (the image refuses
//! to start without it, naming it); connects from the cgroup are rewritten
//! to a master (the proxy carries none of them); established connections
//! and new connects survive the container being stopped and a new one
//! started (a static pod update); `cplb dataplane detach` in the image
//! leaves nothing pinned.
//!
//! Everything runs in a private network namespace with podman's storage
//! in a temporary directory of its own.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::engine::{Engine, IMAGE, build_image, config_dir, confined};
use common::kplane::{self, Connect, Env, Net};
use common::{DEADLINE, free_port};
use serde_yaml_ng::Value;

const TEST: &str = "image_in_kernel_mode_as_the_manifest_runs_it";
const MANIFEST: &str = "config/kubernetes/static-pod-kernel.yaml";

/// Not a test: the client process the test starts inside its cgroup
/// (`common::kplane::Client`).
#[test]
#[ignore = "the client process of the kernel tests, run by them"]
fn client_process() {
    if let Ok(procs) = std::env::var(kplane::CLIENT_ENV) {
        kplane::serve(&procs);
    }
}

/// What the manifest's container asks of the engine.
struct Pod {
    /// `runAsUser:runAsGroup`.
    user: String,
    /// `capabilities.add`, as podman names them (`CAP_BPF`).
    caps: Vec<String>,
    /// (host path, container path, read-only) of every hostPath mount.
    mounts: Vec<(String, String, bool)>,
    /// `seccompProfile.type`.
    seccomp: String,
}

fn pod() -> Pod {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFEST))
        .expect("the manifest");
    let doc: Value = serde_yaml_ng::from_str(&text).expect(MANIFEST);
    let spec = &doc["spec"];
    assert_eq!(spec["hostNetwork"], true, "{MANIFEST}");
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{MANIFEST}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{MANIFEST}");
    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{MANIFEST}");
    let user = format!(
        "{}:{}",
        sc["runAsUser"].as_u64().expect("runAsUser"),
        sc["runAsGroup"].as_u64().expect("runAsGroup")
    );
    let caps = sc["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    let mounts = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let v = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("the mount's volume");
            (
                v["hostPath"]["path"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
                m["readOnly"] == true,
            )
        })
        .collect();
    let seccomp = sc["seccompProfile"]["type"]
        .as_str()
        .unwrap_or("RuntimeDefault")
        .to_string();
    Pod {
        user,
        caps,
        mounts,
        seccomp,
    }
}

/// A directory removed when dropped, also when the test fails.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node's paths the manifest mounts, as this test stands them in.
struct Host {
    config: PathBuf,
    ca: PathBuf,
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Host {
    fn path(&self, on_node: &str) -> &Path {
        match on_node {
            "/etc/cplb" => &self.config,
            "/etc/kubernetes/pki/ca.crt" => &self.ca,
            "/sys/fs/cgroup" => &self.cgroup,
            "/sys/fs/bpf" => &self.bpffs,
            other => panic!("{MANIFEST} mounts {other}: what stands in for it here?"),
        }
    }
}

/// Where the manifest mounts the node's `on_node` inside the container.
fn mounted_at(pod: &Pod, on_node: &str) -> String {
    pod.mounts
        .iter()
        .find(|(h, _, _)| h == on_node)
        .unwrap_or_else(|| panic!("{MANIFEST} mounts {on_node}"))
        .1
        .clone()
}

/// `podman run` arguments for the manifest's container, with `caps` (the
/// manifest's, or fewer), `user` and `seccomp` (the manifest's, or the
/// engine's default), then `rest`.
fn run_args(
    pod: &Pod,
    host: &Host,
    (user, caps, seccomp): (&str, &[String], &str),
    rest: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = ["run"]
        .into_iter()
        .chain(confined(user))
        .map(String::from)
        .collect();
    for c in caps {
        a.extend(["--cap-add".into(), c.clone()]);
    }
    match seccomp {
        "Unconfined" => a.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
        "RuntimeDefault" => {}
        other => panic!("{MANIFEST}: seccompProfile {other}"),
    }
    for (on_node, inside, ro) in &pod.mounts {
        let ro = if *ro { ":ro" } else { "" };
        a.extend([
            "-v".into(),
            format!("{}:{inside}{ro}", host.path(on_node).display()),
        ]);
    }
    a.extend(rest.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs a container that must refuse to start: its exit code and output.
/// One that keeps running past the deadline is a failure.
fn refused(e: &Engine, args: &[String]) -> (Option<i32>, String) {
    let mut child = e
        .podman()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman runs");
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("started with {args:?}: it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    child.stdout.take().unwrap().read_to_string(&mut said).ok();
    child.stderr.take().unwrap().read_to_string(&mut said).ok();
    (status.code(), said)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    common::promql::get(admin, path).ok()
}

/// Connections the proxy carries now.
fn proxied(admin: SocketAddr) -> f64 {
    let (_, body) = get(admin, "/metrics").expect("/metrics");
    common::metrics::Scrape::parse(&body).get("cplb_client_connections_active", &[])
}

fn status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(admin, "/status").expect("/status").1).unwrap()
}

/// The container's log (cplb's stderr).
fn logs(e: &Engine, name: &str) -> String {
    let out = e.output(&["logs", name]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Ready, in kernel mode, its tables published: its log. A container that
/// exits meanwhile fails the test with its log.
fn kernel_ready(e: &Engine, name: &str, admin: SocketAddr) -> String {
    wait_for("ready", || {
        let running = e.ok(&["inspect", name, "--format", "{{.State.Running}}"]);
        assert_eq!(running, "true", "{name} exited: {}", logs(e, name));
        get(admin, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let v = status(admin);
    assert_eq!(v["dataplane"]["mode"], "kernel", "{}", v["dataplane"]);
    let mut said = String::new();
    wait_for("the tables published", || {
        said = logs(e, name);
        said.contains("kernel data plane tables published")
    });
    said
}

#[test]
fn image_in_kernel_mode_as_the_manifest_runs_it() {
    if !common::require::tool(TEST, "podman", "podman")
        || !common::require::tool(TEST, "runc", "runc")
        || !common::require::root(TEST, "podman runs containers as root here")
    {
        return;
    }
    let Some(env) = Env::new(TEST) else { return };
    // As systemd mounts /sys/fs/bpf: root's, 0700.
    std::fs::set_permissions(&env.bpffs.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    common::netns::run(TEST, &[], move || async move {
        tokio::task::spawn_blocking(move || in_kernel_mode(&env))
            .await
            .unwrap()
    });
}

fn in_kernel_mode(env: &Env) {
    let pod = pod();
    let e = Engine::new();
    println!("image built in {:?}", build_image(&e));
    let net = Net::new();
    let masters = [
        net.serve("master-1", "127.0.0.1:0"),
        net.serve("master-2", "127.0.0.1:0"),
    ];
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin_port = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut yaml = format!(
        "listen: {listen}\nadmin: {admin}\nshutdown_grace: 2s\n\
         hash:\n  key: node\n  node_id: node-7\n\
         health_check:\n  mode: tcp\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n  fall: 1\n\
         dataplane:\n  mode: kernel\n  cgroup: {}\n  bpffs: {}\nupstreams:\n",
        mounted_at(&pod, "/sys/fs/cgroup"),
        mounted_at(&pod, "/sys/fs/bpf"),
    );
    for m in &masters {
        yaml.push_str(&format!("  - address: \"{}\"\n", m.addr));
    }
    let config = Removed(config_dir("image-kernel", &yaml));
    let config = &config.0;
    let ca = config.join("unused-ca.crt");
    std::fs::write(&ca, "").unwrap();
    let host = Host {
        config: config.clone(),
        ca,
        cgroup: env.cgroup.path.clone(),
        bpffs: env.bpffs.path.clone(),
    };

    // Each privilege the manifest adds is needed: without it, the start is
    // refused, naming it, and nothing is pinned.
    for (i, cap) in pod.caps.iter().enumerate() {
        let fewer: Vec<String> = pod
            .caps
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| c.clone())
            .collect();
        let (code, said) = refused(
            &e,
            &run_args(
                &pod,
                &host,
                (&pod.user, &fewer, &pod.seccomp),
                &["--rm", IMAGE],
            ),
        );
        println!("without {cap}: exit {code:?}: {}", said.trim());
        assert_ne!(code, Some(0));
        assert!(
            said.contains(&format!("missing capability {cap}")),
            "{said}"
        );
    }
    // And root's uid: another uid with the same capabilities cannot pin in
    // the node's 0700 bpffs.
    let (code, said) = refused(
        &e,
        &run_args(
            &pod,
            &host,
            ("58443:58443", &pod.caps, &pod.seccomp),
            &["--rm", IMAGE],
        ),
    );
    println!("as uid 58443: exit {code:?}: {}", said.trim());
    assert_ne!(code, Some(0));
    assert!(said.contains("ermission denied"), "{said}");
    // And the seccomp profile: the engine's default allows bpf() only with
    // CAP_SYS_ADMIN.
    let (code, said) = refused(
        &e,
        &run_args(
            &pod,
            &host,
            (&pod.user, &pod.caps, "RuntimeDefault"),
            &["--rm", IMAGE],
        ),
    );
    println!(
        "with the engine's default seccomp profile: exit {code:?}: {}",
        said.trim()
    );
    assert_ne!(code, Some(0));
    assert!(
        said.contains("refused (EPERM)") && said.contains("seccomp"),
        "{said}"
    );
    assert_eq!(
        env.bpffs.contents(),
        Vec::<String>::new(),
        "pinned by a refused start"
    );

    // As the manifest runs it.
    let run = |name: &str| {
        e.ok(&strs(&run_args(
            &pod,
            &host,
            (&pod.user, &pod.caps, &pod.seccomp),
            &["-d", "--name", name, IMAGE],
        )));
    };
    run("cplb-k1");
    let logs = kernel_ready(&e, "cplb-k1", admin);
    assert!(logs.contains("kernel data plane attached"), "{logs}");

    // Connects from the cgroup are rewritten to a master: the master
    // answers, getpeername shows the listen address, and the proxy
    // carries none of them while they are open.
    let mut client = env.client();
    let mut held = Vec::new();
    for _ in 0..20 {
        let got = client.connect(listen);
        let Connect::Ok {
            id, greeting, peer, ..
        } = &got
        else {
            panic!("{got:?}")
        };
        assert!(greeting.starts_with("master-"), "{got:?}");
        assert_eq!(*peer, listen, "getpeername shows the listen address");
        held.push(*id);
    }
    assert_eq!(proxied(admin), 0.0, "the proxy carries none of them");
    wait_for("the kernel's 20 open connections in /status", || {
        let v = status(admin);
        let open: i64 = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["kernel"]["open"].as_i64())
            .sum();
        open == 20
    });
    // A process outside the test cgroup (this one) is not rewritten: the
    // proxy carries it. So only the test's cgroup is attached.
    let outside = std::net::TcpStream::connect(listen).unwrap();
    wait_for("the outsider proxied", || proxied(admin) == 1.0);
    drop(outside);

    // A static pod update: the container is stopped, then a new one runs.
    // Another client connects all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let mut c = env.client();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = c.ask(&format!("rate {listen} 20"));
                if r.starts_with("ok ") {
                    ok.fetch_add(20, Ordering::Relaxed);
                } else if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    println!("load: the first failure: {r}");
                }
            }
        })
    };
    wait_for("load", || ok.load(Ordering::Relaxed) > 0);
    let t = Instant::now();
    e.ok(&["stop", "-t", "10", "cplb-k1"]);
    let stopped = t.elapsed();
    let at_stop = ok.load(Ordering::Relaxed);
    let code = e.ok(&["inspect", "cplb-k1", "--format", "{{.State.ExitCode}}"]);
    assert_eq!(code, "0", "cplb exited on its own at SIGTERM");
    e.ok(&["rm", "cplb-k1"]);
    // No cplb runs: the pinned programs still choose.
    wait_for("connects while no cplb runs", || {
        ok.load(Ordering::Relaxed) >= at_stop + 100
    });
    let gap_connect = client.connect(listen);
    assert!(gap_connect.greeting().starts_with("master-"));
    let gap_start = Instant::now();
    let during_gap_before = ok.load(Ordering::Relaxed);
    run("cplb-k2");
    let logs = kernel_ready(&e, "cplb-k2", admin);
    let gap = gap_start.elapsed();
    let attached = logs
        .lines()
        .find(|l| l.contains("kernel data plane attached"))
        .unwrap_or_default()
        .to_string();
    assert!(attached.contains("adopted=true"), "{logs}");
    let after = ok.load(Ordering::Relaxed);
    wait_for("connects after the restart", || {
        ok.load(Ordering::Relaxed) >= after + 100
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (alive, dead) = client.ping_all();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "stop+run: podman stop took {stopped:?}, the new container ready {gap:?} after `run`; \
         {ok} connects through it ({} while no cplb ran, from the stop to the new one's start), \
         {failed} failed; established: {} alive, {} closed",
        during_gap_before - at_stop,
        alive.len(),
        dead.len()
    );
    assert_eq!(failed, 0, "connects failed during the restart");
    assert!(dead.is_empty(), "closed by the restart: {dead:?}");
    assert_eq!(
        alive.len(),
        held.len() + 1,
        "the 20, and the one made while stopped"
    );
    assert_eq!(proxied(admin), 0.0);

    // Uninstalling: `cplb dataplane detach` in the image, as the pod runs
    // it, removes every pin; a connect is then no longer rewritten.
    e.ok(&["rm", "-f", "-t", "10", "cplb-k2"]);
    let out = e.ok(&strs(&run_args(
        &pod,
        &host,
        (&pod.user, &pod.caps, &pod.seccomp),
        &[
            "--rm",
            IMAGE,
            "dataplane",
            "detach",
            "--config",
            "/etc/cplb/cplb.yaml",
        ],
    )));
    println!("{out}");
    assert!(out.contains("detached"), "{out}");
    assert_eq!(env.bpffs.contents(), Vec::<String>::new(), "left pinned");
    assert!(
        client.connect(listen).is_err(),
        "rewritten with nothing attached"
    );
    // Established connections are the masters', not cplb's.
    assert!(client.ping(alive[0]));
    drop(client);
    // What the docs name as the minimum is what ran.
    assert_eq!(pod.caps, ["CAP_BPF", "CAP_NET_ADMIN"], "{MANIFEST}");
    assert_eq!(pod.user, "0:0", "{MANIFEST}");
    assert_eq!(pod.seccomp, "Unconfined", "{MANIFEST}");
}
