//! Hot reload: every trigger, no dropped connections, refused bad configs,
//! state kept across reloads.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::process::*;
use common::*;

/// A proxy with the admin endpoint and `hash.key: connection`.
fn file_conf(ups: &[SocketAddr]) -> TestConfig {
    TestConfig::new(ups).admin().hash_key("connection")
}

async fn start_from_file(path: &Path) -> Proxy {
    Proxy::start(cplb::Config::load(path).unwrap()).await
}

/// Connects until every connection lands on `name` (the new set applied).
async fn wait_for_upstream(proxy: &Proxy, name: &str) {
    eventually(DEADLINE, async || {
        let mut all = true;
        for _ in 0..6 {
            if Client::connect(proxy.addr).await.upstream != name {
                all = false;
            }
        }
        all.then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("reload to {name} never applied"));
}

fn reloads(p: &Proxy, result: &str) -> f64 {
    p.scrape()
        .get("cplb_config_reloads_total", &[("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_applied() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("inplace");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    assert_eq!(Client::connect(proxy.addr).await.upstream, "a");
    // Truncate and write the same inode, as `echo > file` does.
    std::fs::write(&path, file_conf(&[b.addr]).yaml()).unwrap();
    wait_for_upstream(&proxy, "b").await;
    assert_eq!(
        reloads(&proxy, "success"),
        1.0,
        "one reload for the burst of write events"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_write_temp_and_rename_is_applied() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("rename");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    let tmp = dir.join(".cplb.yaml.swp");
    std::fs::write(&tmp, file_conf(&[b.addr]).yaml()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_for_upstream(&proxy, "b").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_is_applied() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("recreate");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    std::fs::remove_file(&path).unwrap();
    // While missing, the old config keeps serving.
    let mut c = Client::connect(proxy.addr).await;
    c.ping("still here").await;
    assert_eq!(c.upstream, "a");
    std::fs::write(&path, file_conf(&[b.addr]).yaml()).unwrap();
    wait_for_upstream(&proxy, "b").await;
    proxy.shutdown().await;
}

/// The kubelet's atomic ConfigMap update, step by step.
fn configmap_publish(dir: &Path, version: &str, yaml: &str) {
    let ts = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("cplb.yaml"), yaml).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("cplb.yaml").exists() {
        std::os::unix::fs::symlink("..data/cplb.yaml", dir.join("cplb.yaml")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_data_swap_is_applied() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("configmap");
    configmap_publish(&dir, "2026_11_24_10_00_00.1", &file_conf(&[a.addr]).yaml());
    let path: PathBuf = dir.join("cplb.yaml");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let proxy = start_from_file(&path).await;
    assert_eq!(Client::connect(proxy.addr).await.upstream, "a");
    configmap_publish(&dir, "2026_11_24_10_01_00.2", &file_conf(&[b.addr]).yaml());
    std::fs::remove_dir_all(dir.join("..2026_11_24_10_00_00.1")).unwrap();
    wait_for_upstream(&proxy, "b").await;
    assert_eq!(
        reloads(&proxy, "failure"),
        0.0,
        "the swap never exposes a half state"
    );
    proxy.shutdown().await;
}

/// The debug line the reloader logs when a file event finds the running
/// content: the observable "the watcher looked and did nothing".
const UNCHANGED: &str = "content unchanged";

/// The binary with debug logs from cplb, so no-op file events are visible.
fn spawn_debug(path: &Path) -> CplbProcess {
    CplbProcess::spawn_with_file(
        path.to_path_buf(),
        Options {
            log_filter: Some("info,cplb=debug".into()),
            ..Default::default()
        },
    )
}

fn proc_yaml(ups: &[SocketAddr]) -> String {
    file_conf(ups).set("admin", "\"\"").yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_content_is_not_reloaded() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("noop");
    let path = dir.join("cplb.yaml");
    let y = proc_yaml(&[a.addr]);
    std::fs::write(&path, &y).unwrap();
    let mut p = spawn_debug(&path);
    // The watcher looks once when it starts: unchanged. Waiting for it
    // keeps that look out of the next step's debounce window.
    p.wait_for_count(UNCHANGED, 1);
    // 1. The same bytes again: seen, read, compared, not reloaded.
    let t = std::time::Instant::now();
    std::fs::write(&path, &y).unwrap();
    p.wait_for_count(UNCHANGED, 2);
    let noop = t.elapsed();
    assert_eq!(p.count_logs("config reloaded"), 0, "{}", p.logs());
    // 2. An unrelated file beside it never reaches the reloader. Nothing
    // can announce "nothing happened", so outlast three times what the
    // no-op above took to show (debounce included), then look.
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    let quiet = (noop * 3).max(Duration::from_millis(500));
    tokio::time::sleep(quiet).await;
    println!("no-op write seen in {noop:?}; waited {quiet:?} after the unrelated file");
    assert_eq!(p.count_logs(UNCHANGED), 2, "{}", p.logs());
    assert_eq!(p.count_logs("config reloaded"), 0, "{}", p.logs());
    // 3. A real change reloads, once.
    std::fs::write(&path, proc_yaml(&[b.addr])).unwrap();
    p.wait_for_log("config reloaded");
    assert_eq!(Client::connect(p.addr).await.upstream, "b");
    assert_eq!(p.count_logs("config reloaded"), 1, "{}", p.logs());
    assert_eq!(p.count_logs(UNCHANGED), 2, "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("invalid");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    std::fs::write(&path, "upstreams:\n  - address: a:1\n    weight: 0\n").unwrap();
    wait_until("refusal counted", || reloads(&proxy, "failure") == 1.0).await;
    let s = proxy.scrape();
    assert_eq!(s.get("cplb_config_last_reload_successful", &[]), 0.0);
    let mut c = Client::connect(proxy.addr).await;
    c.ping("old config").await;
    assert_eq!(c.upstream, "a");
    assert_eq!(http(proxy.admin.unwrap(), "GET", "/readyz").await.0, 200);
    // An explicit reload reports the reason, naming file and field.
    let err = proxy.reload.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("cplb.yaml") && err.contains("upstreams[0].weight"),
        "{err}"
    );
    // Fixing the file recovers.
    std::fs::write(&path, file_conf(&[a.addr]).idle_timeout("5m").yaml()).unwrap();
    wait_until("fixed config applied", || {
        proxy
            .scrape()
            .get("cplb_config_last_reload_successful", &[])
            == 1.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_reload_and_removed_upstreams_keep_their_connections() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dead = refused_addr();
    let dir = temp_dir("state");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr, b.addr, dead]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    let mut on_a = None;
    for _ in 0..30 {
        let c = Client::connect(proxy.addr).await;
        if c.upstream == "a" && on_a.is_none() {
            on_a = Some(c);
        }
    }
    let mut on_a = on_a.expect("some connection on a");
    let d = dead.to_string();
    assert_eq!(
        proxy.scrape().get("cplb_upstream_up", &[("upstream", &d)]),
        0.0
    );
    // Remove a, keep b and the dead one (with a new weight).
    let new = file_conf(&[b.addr, dead])
        .upstream_set(dead, "weight", 3)
        .yaml();
    std::fs::write(&path, new).unwrap();
    wait_for_upstream(&proxy, "b").await;
    let s = proxy.scrape();
    assert_eq!(
        s.get("cplb_upstream_up", &[("upstream", &d)]),
        0.0,
        "still down after reload"
    );
    assert_eq!(
        s.get(
            "cplb_connect_failures_total",
            &[("upstream", &d), ("reason", "refused")]
        ),
        1.0,
        "not retried"
    );
    // The connection to the removed upstream is untouched.
    on_a.ping("a was removed from the config").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_fields_are_kept_and_the_rest_applies() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("restart");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    // `dataplane` too: attaching or detaching the kernel programs is a
    // restart's job (docs/kernel.md).
    let changed = file_conf(&[b.addr])
        .set("backlog", 100)
        .workers(3)
        .section("dataplane:\n  bpffs: /run/cplb-bpf\n")
        .yaml();
    std::fs::write(&path, changed).unwrap();
    let outcome = proxy.reload.reload().await.unwrap();
    match outcome {
        cplb::reload::Outcome::Applied(c) => {
            assert_eq!(c.restart_needed, vec!["workers", "backlog", "dataplane"]);
            assert_eq!(c.added, vec![b.addr.to_string()]);
            assert_eq!(c.removed, vec![a.addr.to_string()]);
        }
        other => panic!("{other:?}"),
    }
    wait_for_upstream(&proxy, "b").await;
    proxy.shutdown().await;
}

/// What waits for a restart is shown until the file no longer asks for
/// it: `cplb_config_restart_needed`, `/status` and `cplb status` name the
/// fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_changes_are_shown_until_the_file_drops_them() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("restart-shown");
    let path = dir.join("cplb.yaml");
    let original = file_conf(&[a.addr]).yaml();
    std::fs::write(&path, &original).unwrap();
    let proxy = start_from_file(&path).await;
    let admin = proxy.admin.unwrap();
    assert_eq!(proxy.scrape().get("cplb_config_restart_needed", &[]), 0.0);
    std::fs::write(&path, file_conf(&[a.addr]).workers(3).yaml()).unwrap();
    proxy.reload.reload().await.unwrap();
    assert_eq!(proxy.scrape().get("cplb_config_restart_needed", &[]), 1.0);
    let (_, _, body) = common::http(admin, "GET", "/status").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["last_load"]["restart_needed"],
        serde_json::json!(["workers"])
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .contains("restart needed: workers changed in the file; they apply when cplb restarts"),
        "{table}"
    );
    std::fs::write(&path, &original).unwrap();
    proxy.reload.reload().await.unwrap();
    assert_eq!(proxy.scrape().get("cplb_config_restart_needed", &[]), 0.0);
    let (_, _, body) = common::http(admin, "GET", "/status").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["last_load"]["restart_needed"], serde_json::json!([]));
    proxy.shutdown().await;
}

/// 100 reloads alternating two upstream sets under a steady stream of new
/// connections and long-lived ones carrying data: zero failures allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_drop_nothing() {
    let ups = [
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
        FakeUpstream::start("c").await,
    ];
    let set1 = file_conf(&[ups[0].addr, ups[1].addr]).yaml();
    let set2 = file_conf(&[ups[1].addr, ups[2].addr]).yaml();
    let dir = temp_dir("soak");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, &set1).unwrap();
    let proxy = Arc::new(start_from_file(&path).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    let mut long = Vec::new();
    for i in 0..8 {
        let (addr, stop) = (proxy.addr, stop.clone());
        long.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                c.ping(&format!("long-{i}-{n}")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }));
    }
    // Where the short connections landed: a is only in set 1, c only in set 2.
    let landed: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let mut short = Vec::new();
    for _ in 0..3 {
        let (addr, stop, made, failed) = (proxy.addr, stop.clone(), made.clone(), failed.clone());
        let landed = landed.clone();
        short.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match Client::connect_from(None, addr).await {
                    Some(mut c) => {
                        c.ping("short").await;
                        let i = (c.upstream.as_bytes()[0] - b'a') as usize;
                        landed[i].fetch_add(1, Ordering::Relaxed);
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 0..100 {
        // Written whole and renamed into place: an in-place write can be
        // read half-done by the watcher's own reload, which then (rightly)
        // refuses it; that race is not what this test is about.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, if i % 2 == 0 { &set2 } else { &set1 }).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let r = proxy.reload.reload().await.expect("valid reload");
        assert!(
            matches!(r, cplb::reload::Outcome::Applied(_)),
            "reload {i}: {r:?}"
        );
        // Pace the reloads so that new connections interleave with each.
        let next = made.load(Ordering::Relaxed) + 3;
        wait_until("connections between reloads", || {
            made.load(Ordering::Relaxed) >= next
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in long {
        let n = l
            .await
            .expect("long-lived connection survived every reload");
        assert!(n > 0);
    }
    for s in short {
        s.await.unwrap();
    }
    let made = made.load(Ordering::Relaxed);
    let landed: Vec<usize> = landed.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    println!("100 reloads: {made} new connections during them (a/b/c: {landed:?}), 8 long-lived");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no new connection failed"
    );
    // Both upstream sets really served: a only exists in set 1 and c only
    // in set 2, so each reload took effect while connections kept coming.
    assert!(
        landed[0] >= 20 && landed[2] >= 20,
        "new connections followed the reloads: a/b/c {landed:?}"
    );
    assert!(reloads(&proxy, "success") >= 100.0);
    assert_eq!(reloads(&proxy, "failure"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_forces_a_reload_of_unchanged_content() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("sighup");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, proc_yaml(&[a.addr])).unwrap();
    let mut p = spawn_debug(&path);
    // The watcher's first look is done and changed nothing; the file is
    // not touched again, so only SIGHUP can reload from here on.
    p.wait_for_count(UNCHANGED, 1);
    assert_eq!(p.count_logs("config reloaded"), 0, "{}", p.logs());
    p.signal(libc::SIGHUP);
    p.wait_for_log("SIGHUP: reloading configuration");
    p.wait_for_log("config reloaded");
    assert_eq!(
        p.count_logs(UNCHANGED),
        1,
        "a forced reload, not a content check"
    );
    // A second SIGHUP is a second forced reload.
    p.signal(libc::SIGHUP);
    p.wait_for_count("config reloaded", 2);
    assert_eq!(Client::connect(p.addr).await.upstream, "a");
    assert!(p.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_shutdown_grace_is_the_one_the_drain_uses() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("grace");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).shutdown_grace("60s").yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap(); // grace 200ms
    proxy.reload.reload().await.unwrap();
    let mut c = Client::connect(proxy.addr).await;
    c.ping("held open").await;
    tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("drain used the reloaded 200ms grace, not 60s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_files_beside_the_config_trigger_nothing() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("noise");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let proxy = start_from_file(&path).await;
    std::fs::write(&path, "upstreams: []\n").unwrap();
    wait_until("refused once", || reloads(&proxy, "failure") == 1.0).await;
    // A log file beside the config, written often: no re-read, no new refusal.
    for i in 0..30 {
        std::fs::write(dir.join("cplb.log"), format!("line {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same invalid bytes written again: seen, but not refused again.
    std::fs::write(&path, "upstreams: []\n").unwrap();
    // A real fix afterwards proves the watcher was alive all along.
    let b = FakeUpstream::start("b").await;
    std::fs::write(&path, file_conf(&[b.addr]).yaml()).unwrap();
    wait_for_upstream(&proxy, "b").await;
    assert_eq!(
        reloads(&proxy, "failure"),
        1.0,
        "one refusal, not one per event"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_a_bad_edit_clears_the_failed_reload_gauge() {
    let a = FakeUpstream::start("a").await;
    let dir = temp_dir("undo");
    let path = dir.join("cplb.yaml");
    let good = file_conf(&[a.addr]).yaml();
    std::fs::write(&path, &good).unwrap();
    let proxy = start_from_file(&path).await;
    let gauge = |p: &Proxy| p.scrape().get("cplb_config_last_reload_successful", &[]);
    assert_eq!(gauge(&proxy), 1.0);
    std::fs::write(&path, "upstreams: []\n").unwrap();
    wait_until("refusal counted", || reloads(&proxy, "failure") == 1.0).await;
    assert_eq!(gauge(&proxy), 0.0);
    // The running config's exact bytes again: nothing to apply, but the
    // file is good again and the alert must clear.
    std::fs::write(&path, &good).unwrap();
    wait_until("gauge back to 1", || gauge(&proxy) == 1.0).await;
    assert_eq!(reloads(&proxy, "success"), 0.0, "nothing was re-applied");
    assert_eq!(reloads(&proxy, "failure"), 1.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_a_bad_edit_logs_that_the_file_is_valid_again() {
    let a = FakeUpstream::start("a").await;
    let good = file_conf(&[a.addr]).set("admin", "\"\"").yaml();
    let mut p = CplbProcess::spawn(&good, Options::default());
    std::fs::write(&p.config_path, "upstreams: []\n").unwrap();
    p.wait_for_log("config reload refused");
    std::fs::write(&p.config_path, &good).unwrap();
    p.wait_for_log("config file is valid again");
    assert_eq!(p.count_logs("config file is valid again"), 1);
}

/// Makes a FIFO at `path`: a read of it blocks until a writer comes, as a
/// read from a hung volume does.
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Points `path` at `target` in one rename, as a ConfigMap swap does.
fn swap_symlink(path: &Path, target: &Path) {
    let tmp = path.with_extension("tmp-link");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until someone has `fifo` open for reading (a reload blocked on
/// it): opening it for writing without blocking fails with ENXIO until
/// then. Returns the writing end.
async fn reader_of(fifo: &Path, what: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    eventually(DEADLINE, async || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .ok()
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: nothing read {}", fifo.display()))
}

/// Hands `text` to the blocked reader and closes: its read returns.
fn feed(mut w: std::fs::File, text: &str) {
    use std::io::Write;
    // A config is far below the pipe's 64 KiB: the write never waits.
    w.write_all(text.as_bytes()).unwrap();
}

/// Defect 3 of issue 19: triggers used to wait in a 16-deep queue, and a
/// SIGHUP that found it full was dropped. With the reloader held by a
/// read that hangs (the config path swapped for a symlink to a FIFO
/// outside the watched directory, so reading it makes no file event),
/// 20 file events and then 20 SIGHUPs arrive. After that reload, exactly
/// one forced reload must follow (the SIGHUPs, coalesced with the file
/// events), then nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighups_during_a_reload_make_exactly_one_more_reload() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("hup-during");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    // As in the binary: a read that blocks its thread (before the fix)
    // must not block this test's deadlines.
    let proxy = Proxy::start_on_own_thread(cplb::Config::load(&path).unwrap()).await;
    let base = reloads(&proxy, "success");
    let fifo = temp_dir("hup-fifo").join("cplb.yaml");
    mkfifo(&fifo);
    swap_symlink(&path, &fifo);
    // The swap's file event: a reload, blocked reading the FIFO.
    let w = reader_of(&fifo, "the swap's reload").await;
    for _ in 0..20 {
        proxy.reload.file_changed();
    }
    for _ in 0..20 {
        proxy.reload.signal();
    }
    let b_yaml = file_conf(&[b.addr]).yaml();
    feed(w, &b_yaml);
    wait_until("the blocked reload applied", || {
        reloads(&proxy, "success") == base + 1.0
    })
    .await;
    wait_for_upstream(&proxy, "b").await;
    // The SIGHUPs: a forced reload, which reads the FIFO again. The same
    // content: only a forced reload counts it as a success.
    let w = reader_of(&fifo, "a reload after the SIGHUPs").await;
    feed(w, &b_yaml);
    wait_until(
        "the SIGHUPs' forced reload (a SIGHUP that came during a reload was dropped)",
        || reloads(&proxy, "success") == base + 2.0,
    )
    .await;
    // Only one: with the path a plain file again, an explicit reload is
    // the next forced one, and the last.
    let plain = dir.join("plain.yaml");
    std::fs::write(&plain, &b_yaml).unwrap();
    std::fs::rename(&plain, &path).unwrap();
    let out = tokio::time::timeout(DEADLINE, proxy.reload.reload())
        .await
        .expect("the explicit reload waited behind others")
        .unwrap();
    assert!(matches!(out, cplb::reload::Outcome::Applied(_)), "{out:?}");
    let total = reloads(&proxy, "success") - base;
    println!("reloads after the swap: {total} (20 file events and 20 SIGHUPs during the first)");
    assert_eq!(
        total, 3.0,
        "the blocked one, one for the SIGHUPs, the explicit one"
    );
    proxy.shutdown().await;
}

/// Defect 4 of issue 19: a config read that hangs (a FIFO standing in for
/// a hung volume) used to block the control-plane thread of the binary,
/// so `/healthz` went unanswered. It must keep answering while the read
/// hangs, the read's config must apply once it returns, and a read that
/// never returns must not hold up shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_config_read_stalls_neither_healthz_nor_shutdown() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("hung-read");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, file_conf(&[a.addr]).yaml()).unwrap();
    let mut p = CplbProcess::spawn_with_file(path.clone(), Options::default());
    let admin = p.admin.expect("admin enabled");
    let fifo = temp_dir("hung-fifo").join("cplb.yaml");
    mkfifo(&fifo);
    swap_symlink(&path, &fifo);
    let w = reader_of(&fifo, "the swap's reload").await;
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = std::time::Instant::now();
        let (status, _, body) = http(admin, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    println!("/healthz while the config read hangs: 10 of 10 answered, worst {worst:?}");
    feed(w, &file_conf(&[b.addr]).yaml());
    p.wait_for_log("config reloaded");
    assert_eq!(Client::connect(p.addr).await.upstream, "b");
    // A read that never returns: SIGHUP reads the FIFO, and the writer
    // held open sends nothing, so the read waits for data.
    p.signal(libc::SIGHUP);
    let w = reader_of(&fifo, "the SIGHUP's reload").await;
    let t = std::time::Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.logs());
    println!("exit with a read still hanging: {:?}", t.elapsed());
    drop(w);
}

/// A ConfigMap update as the running binary logs it: one plain line of
/// cplb's own, none of notify's internals (Rust debug text such as
/// `Os { code: 22, .. }` or `WatchNotFound`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swap_logs_no_debug_text() {
    let (a, b) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
    );
    let dir = temp_dir("configmap-logs");
    configmap_publish(&dir, "2026_11_24_10_00_00.1", &proc_yaml(&[a.addr]));
    // The watcher's own debug line says when it watches: a swap before
    // that would be picked up at its start, not seen as a swap.
    let mut p = CplbProcess::spawn_with_file(
        dir.join("cplb.yaml"),
        Options {
            log_filter: Some("info,cplb::watch=debug".into()),
            ..Default::default()
        },
    );
    p.wait_for_count("watching config directory", 1);
    for (n, (version, up, name)) in [
        ("2026_11_24_10_01_00.2", b.addr, "b"),
        ("2026_11_24_10_02_00.3", a.addr, "a"),
    ]
    .into_iter()
    .enumerate()
    {
        let old = std::fs::read_link(dir.join("..data")).unwrap();
        configmap_publish(&dir, version, &proc_yaml(&[up]));
        std::fs::remove_dir_all(dir.join(old)).unwrap();
        p.wait_for_count("config reloaded", n + 1);
        p.wait_for_count("watching the new one", n + 1);
        p.wait_for_count("watching config directory", n + 2);
        assert_eq!(Client::connect(p.addr).await.upstream, name);
    }
    let logs = p.logs();
    for debug_text in ["Os {", "WatchNotFound", "notify", "code: "] {
        assert!(!logs.contains(debug_text), "{debug_text:?} in:\n{logs}");
    }
}
