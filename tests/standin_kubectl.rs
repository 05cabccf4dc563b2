//! The stand-in API server is faithful enough for the real kubectl: list
//! EndpointSlices by label, watch them and see a change, over TLS with a
//! client certificate or a bearer token. (kube-rs against the stand-in is
//! exercised by tests/discovery.rs.)

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::cluster::{Auth, Cluster};
use common::wait_until;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    let cache = kubeconfig.with_file_name("cache");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--request-timeout=10s")
        .args(args)
        .env_remove("KUBECONFIG");
    c
}

const GET: &[&str] = &[
    "get",
    "endpointslices",
    "-n",
    "default",
    "-l",
    "kubernetes.io/service-name=kubernetes",
    "-o",
    "json",
];

async fn get(kubeconfig: std::path::PathBuf) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let o = kubectl(&kubeconfig, GET).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn addresses(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_lists_endpointslices_with_a_client_certificate() {
    if !common::require::tool(
        "kubectl_lists_endpointslices_with_a_client_certificate",
        "kubectl",
        "kubernetes-client",
    ) {
        return;
    }
    let c = Cluster::start(3).await;
    c.list(&[0, 1, 2]);
    let server = format!("https://{}", c.addr(0));
    let kc = c.kubeconfig("cert", &server, Auth::ClientCert);
    let (ok, out, err) = get(kc).await;
    assert!(ok, "kubectl failed: {err}");
    assert_eq!(
        addresses(&out),
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "{out}"
    );
    assert!(out.contains(&format!("\"port\": {}", c.port)), "{out}");
    assert!(out.contains("\"name\": \"https\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_authenticates_with_a_token_and_is_refused_without() {
    if !common::require::tool(
        "kubectl_authenticates_with_a_token_and_is_refused_without",
        "kubectl",
        "kubernetes-client",
    ) {
        return;
    }
    let c = Cluster::start(1).await;
    c.list(&[0]);
    let server = format!("https://{}", c.addr(0));
    let (ok, out, err) = get(c.kubeconfig("token", &server, Auth::Token)).await;
    assert!(ok, "kubectl with a token failed: {err}");
    assert_eq!(addresses(&out), ["127.0.0.2"]);
    let (ok, _, err) = get(c.kubeconfig("wrong", &server, Auth::WrongToken)).await;
    assert!(!ok, "a wrong token was served");
    assert!(
        err.contains("Unauthorized") || err.contains("logged in"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_watch_sees_a_master_join_and_leave() {
    if !common::require::tool(
        "kubectl_watch_sees_a_master_join_and_leave",
        "kubectl",
        "kubernetes-client",
    ) {
        return;
    }
    let c = Cluster::start(2).await;
    c.list(&[0]);
    let server = format!("https://{}", c.addr(0));
    let kc = c.kubeconfig("watch", &server, Auth::ClientCert);
    let mut child = kubectl(&kc, GET)
        .arg("--watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let seen = |s: &str| out.lock().unwrap().contains(s);
    wait_until("kubectl prints the first master", || seen("127.0.0.2")).await;
    let watches = c.store.watches();
    wait_until("kubectl opens its watch", || c.store.open_watches() > 0).await;
    assert!(!seen("127.0.0.3"));
    c.list(&[0, 1]);
    wait_until("kubectl --watch prints the joining master", || {
        seen("127.0.0.3")
    })
    .await;
    let before = out.lock().unwrap().len();
    c.list(&[1]);
    wait_until(
        "kubectl --watch prints the slice without the first master",
        || {
            let o = out.lock().unwrap();
            let tail = &o[before..];
            tail.contains("127.0.0.3") && !tail.contains("127.0.0.2")
        },
    )
    .await;
    eprintln!(
        "watches opened by kubectl: {}",
        c.store.watches() - watches + 1
    );
    let _ = child.kill();
    let _ = child.wait();
}
