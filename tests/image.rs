//! The container image, built and run on a real engine (podman with runc),
//! as operators run it: the Dockerfile's runtime stage, built on a base
//! made here (no registry is reachable) from the binary cargo built; run
//! host-network, as uid 58443, read-only, with every capability dropped
//! and the config directory mounted read-only. Clients through it reach
//! stand-in masters; `cplb status` and `/metrics` work from the host;
//! `podman stop` drains within the grace period; a second container on
//! the same port takes over with no failed connection (a DaemonSet's
//! `maxSurge` update); and the discovery static pod's identity (uid 0, no
//! capability) reads kubeadm's root-owned 0600 kubelet credentials and
//! writes its state directory, where uid 58443 cannot.
//!
//! Everything runs in a private network namespace (`tcp_migrate_req` on in
//! it only) with podman's storage in a temporary directory of its own.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::engine::{Engine, IMAGE, build_image, config_dir, confined};
use common::testconfig::TestConfig;
use common::{Client, DEADLINE, FakeUpstream, eventually, free_port};
use tokio::io::AsyncBufReadExt;

const TEST: &str = "image_runs_as_operators_run_it";

/// `podman run -d` as the static pod runs cplb: host network, uid 58443,
/// read-only root, no capabilities, the config directory read-only.
fn run_proxy(e: &Engine, name: &str, config: &Path) {
    let mount = format!("{}:/etc/cplb:ro", config.display());
    let mut args = vec!["run", "-d", "--name", name];
    args.extend(confined("58443:58443"));
    args.extend(["-v", &mount, IMAGE]);
    e.ok(&args);
}

async fn ready(admin: SocketAddr) {
    eventually(DEADLINE, async || {
        tokio::task::spawn_blocking(move || common::promql::get(admin, "/readyz"))
            .await
            .unwrap()
            .ok()
            .filter(|(code, _)| *code == 200)
    })
    .await
    .unwrap_or_else(|_| panic!("cplb at {admin} never ready"));
}

/// One short connection through the proxy: connected and greeted by an
/// upstream, or a failure.
async fn one_connection(proxy: SocketAddr) -> bool {
    let Ok(Ok(s)) = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(proxy)).await
    else {
        return false;
    };
    let mut r = tokio::io::BufReader::new(s);
    let mut line = String::new();
    matches!(
        tokio::time::timeout(DEADLINE, r.read_line(&mut line)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[test]
fn image_runs_as_operators_run_it() {
    if !common::require::tool(TEST, "podman", "podman")
        || !common::require::tool(TEST, "runc", "runc")
        || !common::require::root(TEST, "podman runs containers as root here")
    {
        return;
    }
    common::netns::run(TEST, &[("ipv4/tcp_migrate_req", "1")], || async {
        let e = Engine::new();
        let took = build_image(&e);
        println!("image built in {took:?}");
        proxy_mode(&e).await;
        discovery_identity(&e);
    });
}

async fn proxy_mode(e: &Engine) {
    let (m1, m2) = (
        FakeUpstream::start("master-1").await,
        FakeUpstream::start("master-2").await,
    );
    let port = free_port();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = |admin: u16| {
        TestConfig::new(&[m1.addr, m2.addr])
            .set("listen", proxy)
            .set("admin", format!("127.0.0.1:{admin}"))
            .set("shutdown_grace", "3s")
            .yaml()
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let admin_a_addr: SocketAddr = format!("127.0.0.1:{admin_a}").parse().unwrap();
    let admin_b_addr: SocketAddr = format!("127.0.0.1:{admin_b}").parse().unwrap();
    let dir_a = config_dir("image-a", &conf(admin_a));
    run_proxy(e, "cplb-a", &dir_a);
    ready(admin_a_addr).await;

    // Clients reach the masters through it.
    let mut held = Client::connect(proxy).await;
    held.ping("through the container").await;
    assert!(["master-1", "master-2"].contains(&held.upstream.as_str()));

    // `cplb status` and /metrics from the host.
    let status = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--admin", &admin_a_addr.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    println!("{table}");
    assert_eq!(status.status.code(), Some(0), "{table}");
    assert!(table.contains("upstreams:    2 of 2 usable"), "{table}");
    let (code, metrics) =
        tokio::task::spawn_blocking(move || common::promql::get(admin_a_addr, "/metrics").unwrap())
            .await
            .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("cplb_connections_total{"), "{metrics}");

    // The surge: B joins the port (same uid, SO_REUSEPORT) while clients
    // keep connecting; then A is stopped and drains. No connection fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let c = if one_connection(proxy).await {
                    &ok
                } else {
                    &failed
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let dir_b = config_dir("image-b", &conf(admin_b));
    run_proxy(e, "cplb-b", &dir_b);
    ready(admin_b_addr).await;
    let before_stop = ok.load(Ordering::Relaxed);

    // `podman stop` (SIGTERM, then SIGKILL after 10 s): A drains, the held
    // connection still works during the drain, and A exits 0 at its
    // shutdown_grace (3 s), well within podman's grace.
    let t = Instant::now();
    let stopper = {
        let mut c = e.podman();
        c.args(["stop", "-t", "10", "cplb-a"]);
        tokio::task::spawn_blocking(move || c.output().unwrap())
    };
    eventually(DEADLINE, async || {
        tokio::task::spawn_blocking(move || common::promql::get(admin_a_addr, "/readyz"))
            .await
            .unwrap()
            .ok()
            .filter(|(code, body)| *code == 503 && body.contains("draining"))
    })
    .await
    .ok();
    held.ping("during the drain").await;
    let stopped = stopper.await.unwrap();
    let drain = t.elapsed();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let code = e.ok(&["inspect", "cplb-a", "--format", "{{.State.ExitCode}}"]);
    println!("podman stop took {drain:?}; cplb-a exited {code}");
    assert_eq!(
        code, "0",
        "cplb drained and exited on its own, before SIGKILL"
    );
    assert!(
        drain < Duration::from_secs(10),
        "{drain:?}: killed, not drained"
    );

    // Keep the load on B alone for a moment, then count.
    let after = ok.load(Ordering::Relaxed);
    eventually(DEADLINE, async || {
        (ok.load(Ordering::Relaxed) > after + 100).then_some(())
    })
    .await
    .expect("connections go on through cplb-b");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("handover: {ok} connections ({before_stop} before the stop), {failed} failed");
    assert!(before_stop > 0);
    assert_eq!(failed, 0, "connections failed during the handover");
    e.ok(&["rm", "-f", "-t", "0", "cplb-b"]);
    for d in [dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// kubeadm's files as kubeadm makes them: kubelet.conf and the client
/// certificate it names root's, mode 0600; /var/lib/cplb root's, 0755.
/// `cplb --check` in the image, with the discovery static pod's identity
/// (uid 0, no capability, read-only root), reads them and writes beside
/// the state file; with the other pods' (uid 58443) it cannot.
fn discovery_identity(e: &Engine) {
    let host = common::process::temp_dir("image-kubeadm");
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = host.join("pki");
    let state = host.join("state");
    for d in [&pki, &state] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["system:node:worker-1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let client = pki.join("kubelet-client-current.pem");
    std::fs::write(&client, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let kubeconfig = host.join("kubelet.conf");
    // As kubeadm writes it: the cluster CA inline, the client certificate
    // and key in one file under /var/lib/kubelet/pki.
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
             certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n\
             users:\n- name: u\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    \
             client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            common::cluster::base64(cert.pem().as_bytes())
        ),
    )
    .unwrap();
    for f in [&client, &kubeconfig] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = config_dir(
        "image-discovery",
        &TestConfig::new(&["10.0.0.1:6443".parse().unwrap()])
            .section(
                "discovery:\n  kubeconfig: /etc/kubernetes/kubelet.conf\n  state_file: /var/lib/cplb/upstreams.json\n",
            )
            .yaml(),
    );
    let check = |user: &str| {
        let mounts = [
            format!("{}:/etc/cplb:ro", config.display()),
            format!("{}:/etc/kubernetes/kubelet.conf:ro", kubeconfig.display()),
            format!("{}:/var/lib/kubelet/pki:ro", pki.display()),
            format!("{}:/var/lib/cplb", state.display()),
        ];
        let mut args = vec!["run", "--rm"];
        args.extend(confined(user));
        for m in &mounts {
            args.extend(["-v", m.as_str()]);
        }
        args.extend([IMAGE, "--check", "--config", "/etc/cplb/cplb.yaml"]);
        let out = e.output(&args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("--user {user}: {said}");
        (out.status.code(), said)
    };
    let (code, said) = check("0:0");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("discovery default/kubernetes"), "{said}");
    let (code, said) = check("58443:58443");
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("discovery.kubeconfig") && said.contains("Permission denied"),
        "{said}"
    );
    // The check leaves nothing behind in the state directory.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    for d in [host, config] {
        let _ = std::fs::remove_dir_all(d);
    }
}
