//! The `cplb` binary: signals, drain, and surviving file-descriptor exhaustion.

mod common;

use std::time::Duration;

use common::process::*;
use common::*;

/// One upstream, cplb's defaults for `fail_timeout` and `shutdown_grace`.
fn conf(up: std::net::SocketAddr) -> TestConfig {
    TestConfig::new(&[up])
        .fail_timeout(None)
        .unset("shutdown_grace")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_then_exits_zero() {
    let up = FakeUpstream::start("m").await;
    let mut p = CplbProcess::spawn(
        &conf(up.addr).shutdown_grace("30s").yaml(),
        Options::default(),
    );
    let mut c = Client::connect(p.addr).await;
    c.ping("before").await;
    p.signal(libc::SIGTERM);
    p.wait_for_log("draining connections");
    // No longer accepting...
    let refused = tokio::net::TcpStream::connect(p.addr).await;
    assert!(refused.is_err(), "listener closed after SIGTERM");
    // ...but the established connection keeps working during the grace.
    c.ping("during drain").await;
    assert!(p.is_running());
    drop(c);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_over_closes_connections_and_exits_zero() {
    let up = FakeUpstream::start("m").await;
    let mut p = CplbProcess::spawn(
        &conf(up.addr).shutdown_grace("300ms").yaml(),
        Options::default(),
    );
    let mut c = Client::connect(p.addr).await;
    c.ping("x").await;
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(), Some(0));
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    let n = c.reader.read_line(&mut line).await.unwrap_or(0);
    assert_eq!(n, 0, "connection closed at the end of the grace");
    assert_eq!(p.count_logs("drain grace over"), 1);
}

/// A reload that drops an upstream lets its open connections finish, as
/// nginx's reload does; the end of the drain grace must still close them,
/// though that upstream is in no snapshot any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_over_closes_connections_to_an_upstream_a_reload_removed() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let path = temp_dir("orphan").join("cplb.yaml");
    std::fs::write(&path, conf(a.addr).shutdown_grace("300ms").yaml()).unwrap();
    let mut p = CplbProcess::spawn_with_file(path.clone(), Options::default());
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.upstream, "a");
    std::fs::write(&path, conf(b.addr).shutdown_grace("300ms").yaml()).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_for_log("config reloaded");
    assert_eq!(Client::connect(p.addr).await.upstream, "b");
    c.ping("a's connection outlives the reload").await;
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.logs());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    let n = c.reader.read_line(&mut line).await.unwrap_or(0);
    assert_eq!(
        n, 0,
        "connection to the removed upstream closed at the end of the grace"
    );
    assert_eq!(p.count_logs("drain grace over"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once() {
    let up = FakeUpstream::start("m").await;
    let mut p = CplbProcess::spawn(
        &conf(up.addr).shutdown_grace("60s").yaml(),
        Options::default(),
    );
    let mut c = Client::connect(p.addr).await;
    c.ping("x").await;
    p.signal(libc::SIGTERM);
    p.wait_for_log("draining connections");
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(),
        Some(1),
        "forced exit without waiting the 60s grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_slows_down_but_never_kills() {
    let up = FakeUpstream::start("m").await;
    // 48 descriptors: a few for the runtime, then 2 per proxied connection.
    let mut p = CplbProcess::spawn(
        &conf(up.addr).yaml(),
        Options {
            nofile: Some(48),
            ..Default::default()
        },
    );
    // Open far more clients than it can serve; keep them open.
    let mut held = Vec::new();
    for _ in 0..60 {
        let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        held.push(s);
    }
    p.wait_for_log("backing off");
    assert!(p.is_running());
    // Let everything go; the queued clients are then served and new ones work.
    drop(held);
    let mut c = eventually(DEADLINE, async || Client::connect_from(None, p.addr).await)
        .await
        .unwrap_or_else(|_| panic!("never recovered:\n{}", p.logs()));
    c.ping("recovered").await;
    // The episode ends after a quiet second of successful accepts.
    let end = tokio::time::Instant::now() + DEADLINE;
    while p.count_logs("accepting connections again") == 0 {
        assert!(
            tokio::time::Instant::now() < end,
            "episode never ended:\n{}",
            p.logs()
        );
        // While the backlog of closed clients drains, a client can still
        // meet a moment without a free descriptor: closed, never a crash.
        if let Some(mut c) = Client::connect_from(None, p.addr).await {
            c.ping("again").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(p.is_running(), "still alive");
    assert_eq!(
        p.count_logs("backing off"),
        1,
        "logged once per episode, not per error"
    );
    // The upstream was never blamed for our own descriptor shortage.
    assert_eq!(p.count_logs("upstream marked down"), 0, "{}", p.logs());
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    use std::io::BufRead;
    let dir = temp_dir("json");
    let path = dir.join("cplb.yaml");
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&path, conf(nowhere).unset("workers").yaml()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["fields"]["message"], "cplb started");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["upstreams"], serde_json::json!(["127.0.0.1:9"]));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// `wait_child` gives a child's exit status as soon as it exits, and past
/// its deadline kills and reaps a child that does not exit.
#[test]
fn wait_child_returns_the_exit_status_or_kills_at_the_deadline() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    let mut quick = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let status = wait_child(&mut quick, DEADLINE).expect("sh exited");
    assert_eq!(status.code(), Some(3));

    let mut stuck = Command::new("sleep").arg("60").spawn().unwrap();
    let started = std::time::Instant::now();
    let deadline = Duration::from_millis(300);
    assert!(wait_child(&mut stuck, deadline).is_none());
    let waited = started.elapsed();
    println!("gave up on a stuck child after {waited:?}");
    assert!(waited >= deadline, "returned early: {waited:?}");
    let reaped = stuck.try_wait().unwrap();
    assert_eq!(
        reaped.and_then(|s| s.signal()),
        Some(libc::SIGKILL),
        "the stuck child is killed and reaped"
    );
}
