//! Binding the `listen` and `admin` addresses, through the binary: a
//! loopback IPv6 address on a node without IPv6 is skipped (and said so);
//! every other bind failure is fatal with the address and the OS error
//! once; another process already on a `listen` address is named.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::metrics::Scrape;
use common::process::*;
use common::*;

const SKIP_LINE: &str = "not listening on this loopback IPv6 address";

/// Runs `f` in a fresh network namespace with IPv6 disabled or enabled;
/// None (skip) without root or `ip`.
fn in_netns<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    test: &str,
    ipv6_disabled: bool,
    f: impl FnOnce() -> F + Send + 'static,
) -> Option<T> {
    let knob: &'static [(&str, &str)] = if ipv6_disabled {
        &[("ipv6/conf/all/disable_ipv6", "1")]
    } else {
        &[("ipv6/conf/all/disable_ipv6", "0")]
    };
    common::netns::run(test, knob, move || async move {
        let has_v6 = Command::new("ip")
            .args(["-6", "addr", "show", "dev", "lo"])
            .output()
            .unwrap();
        let has_v6 = String::from_utf8_lossy(&has_v6.stdout).contains("::1");
        assert_eq!(has_v6, !ipv6_disabled, "::1 on lo follows disable_ipv6");
        f().await
    })
}

/// cplb on `listen` (and `admin`, `""` for none) in front of `up`, with
/// cplb's own defaults for the drain grace and `fail_timeout`.
fn yaml(listen: &[&str], admin: &str, up: SocketAddr) -> String {
    TestConfig::new(&[up])
        .listen(listen)
        .admin_at(admin)
        .unset("shutdown_grace")
        .fail_timeout(None)
        .yaml()
}

/// Runs cplb with `yaml` until it exits; returns (exit code, stderr).
fn run_to_exit(yaml: &str) -> (Option<i32>, String) {
    let path = temp_dir("listen").join("cplb.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let Some(status) = wait_child(&mut child, DEADLINE) else {
        panic!("cplb did not exit:\n{}", reader.join().unwrap());
    };
    (status.code(), reader.join().unwrap())
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let (st, _, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(st, 200);
    Scrape::parse(&body)
}

/// Connects to `addr` and returns the upstream's greeting.
async fn greeting(addr: SocketAddr) -> String {
    use tokio::io::AsyncBufReadExt;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, tokio::io::BufReader::new(s).read_line(&mut line))
        .await
        .expect("greeting within deadline")
        .unwrap();
    line.trim_end().to_string()
}

// --- [::1] on a node without IPv6 -------------------------------------------

#[test]
fn ipv6_loopback_is_skipped_with_a_warning_when_ipv6_is_disabled() {
    let test = "ipv6_loopback_is_skipped_with_a_warning_when_ipv6_is_disabled";
    in_netns(test, true, || async {
        let up = FakeUpstream::start("m").await;
        let admin: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let mut p = CplbProcess::spawn(
            &yaml(&["127.0.0.1:6443", "[::1]:6443"], "127.0.0.1:8081", up.addr),
            Options::default(),
        );
        let warn = p.wait_for_log(SKIP_LINE);
        println!("{warn}");
        assert_eq!(p.count_logs(SKIP_LINE), 1, "{}", p.logs());
        assert!(
            warn.contains("WARN") && warn.contains("[::1]:6443") && warn.contains("disable_ipv6"),
            "{warn}"
        );
        assert_eq!(greeting("127.0.0.1:6443".parse().unwrap()).await, "m");
        // Not a failure: ready, with the skip in the detail.
        let (st, _, body) = http(admin, "GET", "/readyz").await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("not listening on [::1]:6443"), "{body}");
        let m = scrape(admin).await;
        let skipped = |a| m.get("cplb_listen_skipped", &[("address", a)]);
        assert_eq!(skipped("[::1]:6443"), 1.0);
        assert_eq!(skipped("127.0.0.1:6443"), 0.0);
        assert!(p.is_running());
    });
}

#[test]
fn ipv6_loopback_is_bound_when_ipv6_is_enabled() {
    let test = "ipv6_loopback_is_bound_when_ipv6_is_enabled";
    in_netns(test, false, || async {
        let up = FakeUpstream::start("m").await;
        let admin: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let p = CplbProcess::spawn(
            &yaml(&["127.0.0.1:6443", "[::1]:6443"], "127.0.0.1:8081", up.addr),
            Options::default(),
        );
        assert_eq!(greeting("[::1]:6443".parse().unwrap()).await, "m");
        assert_eq!(greeting("127.0.0.1:6443".parse().unwrap()).await, "m");
        assert_eq!(p.count_logs(SKIP_LINE), 0, "{}", p.logs());
        assert_eq!(http(admin, "GET", "/readyz").await.2, "ok\n");
        let m = scrape(admin).await;
        assert_eq!(
            m.get("cplb_listen_skipped", &[("address", "[::1]:6443")]),
            0.0
        );
        assert!(
            m.samples.iter().any(|s| s.name == "cplb_listen_skipped"),
            "the series exists at 0"
        );
    });
}

#[test]
fn only_ipv6_loopback_on_a_node_without_ipv6_is_fatal() {
    let test = "only_ipv6_loopback_on_a_node_without_ipv6_is_fatal";
    in_netns(test, true, || async {
        // Nothing left to listen on: a proxy that serves nobody must not
        // look healthy.
        let (code, err) = run_to_exit(&yaml(&["[::1]:6443"], "", common::refused_addr()));
        println!("{err}");
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("could not listen on [::1]:6443"), "{err}");
        assert_eq!(
            err.matches("Cannot assign requested address").count(),
            1,
            "{err}"
        );
    });
}

#[test]
fn other_bind_failures_stay_fatal_on_a_node_without_ipv6() {
    let test = "other_bind_failures_stay_fatal_on_a_node_without_ipv6";
    in_netns(test, true, || async {
        // Not loopback (one IPv6, one IPv4 documentation address): not
        // local, EADDRNOTAVAIL like [::1] here, yet a configuration error.
        for bad in ["[2001:db8::1]:6443", "192.0.2.1:6443"] {
            let (code, err) =
                run_to_exit(&yaml(&["127.0.0.1:6443", bad], "", common::refused_addr()));
            println!("{bad}: {err}");
            assert_eq!(code, Some(1), "{bad}: {err}");
            assert!(err.contains(&format!("could not listen on {bad}")), "{err}");
            assert_eq!(
                err.matches("Cannot assign requested address").count(),
                1,
                "{err}"
            );
            assert!(!err.contains(SKIP_LINE), "{err}");
        }
    });
}

#[test]
fn a_taken_ipv6_loopback_port_stays_fatal_when_ipv6_is_enabled() {
    let test = "a_taken_ipv6_loopback_port_stays_fatal_when_ipv6_is_enabled";
    in_netns(test, false, || async {
        // Only "this node has no IPv6" is skipped, not any [::1] failure.
        let taken = std::net::TcpListener::bind("[::1]:6443").unwrap();
        let (code, err) = run_to_exit(&yaml(
            &["127.0.0.1:6443", "[::1]:6443"],
            "",
            common::refused_addr(),
        ));
        println!("{err}");
        drop(taken);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "could not listen on [::1]:6443: it is held by {}",
                holder(std::process::id(), "[::1]:6443".parse().unwrap())
            )) && err.contains("Address already in use"),
            "{err}"
        );
        assert!(!err.contains(SKIP_LINE), "{err}");
    });
}

// --- clear, single error messages ---------------------------------------------

/// How the start-up error names a process holding `addr`.
fn holder(pid: u32, addr: SocketAddr) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    format!("{} (pid {pid}, uid {uid}) on {addr}", comm.trim_end())
}

#[test]
fn a_listen_port_in_use_is_fatal_naming_the_address_its_holder_and_the_os_error_once() {
    // A plain listener (no SO_REUSEPORT): cplb cannot join it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = run_to_exit(&yaml(&[&addr.to_string()], "", refused_addr()));
    println!("{err}");
    assert_eq!(code, Some(1), "{err}");
    let held = holder(std::process::id(), addr);
    assert!(
        err.contains(&format!(
            "/cplb.yaml: listen: could not listen on {addr}: it is held by {held} (cplb shares a port only with SO_REUSEPORT sockets of its own uid): Address already in use"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(!err.contains("admin"), "{err}");
}

#[test]
fn an_admin_port_in_use_says_admin() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = run_to_exit(&yaml(&["127.0.0.1:0"], &addr.to_string(), refused_addr()));
    println!("{err}");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "/cplb.yaml: admin: could not listen on admin address {addr}: it is held by {}",
            holder(std::process::id(), addr)
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

/// Finding 14 of issue 19: a local user's process squatting on cplb's
/// port (here on the wildcard, without SO_REUSEPORT, as a squatter binds
/// while cplb is down) is named in the start-up error: its process, pid
/// and uid.
#[test]
fn a_squatter_on_the_listen_port_is_named() {
    let test = "a_squatter_on_the_listen_port_is_named";
    if !require::tool(test, "python3", "python3-minimal") {
        return;
    }
    let mut squatter = Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket()\n\
             s.bind(('0.0.0.0', 0))\n\
             s.listen()\n\
             print(s.getsockname()[1], flush=True)\n\
             time.sleep(60)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let port: u16 = port.trim().parse().unwrap();
    let wildcard: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let ours: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (code, err) = run_to_exit(&yaml(&[&ours.to_string()], "", refused_addr()));
    let named = holder(squatter.id(), wildcard);
    let _ = squatter.kill();
    let _ = squatter.wait();
    println!("{err}");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "/cplb.yaml: listen: could not listen on {ours}: it is held by {named}"
        )),
        "should name {named}: {err}"
    );
}

// --- another process on a listen address ----------------------------------------

/// A listening socket of this process that cplb can join.
fn reuseport_listener() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(16).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

const OTHER_LINES: [&str; 3] = ["handover", "unexpected", "unidentified"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_reuseport_listener_is_named_as_unexpected() {
    let up = FakeUpstream::start("m").await;
    let (_other, addr) = reuseport_listener();
    let p = CplbProcess::spawn(&yaml(&[&addr.to_string()], "", up.addr), Options::default());
    assert_eq!(p.addr, addr);
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let named = format!("{} (pid {})", me.trim_end(), std::process::id());
    // Logged before "cplb started", which spawn waited for.
    let logs = p.logs();
    println!("{logs}");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("unexpected")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains(&named)
            && lines[0].contains(&addr.to_string()),
        "{} should name {named}",
        lines[0]
    );
    assert_eq!(p.count_logs("handover"), 0, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_cplb_on_the_address_is_named_as_a_handover() {
    let up = FakeUpstream::start("m").await;
    let old = CplbProcess::spawn(&yaml(&["127.0.0.1:0"], "", up.addr), Options::default());
    let port = old.addr.port();
    // A fixed port from here on: the check runs for it.
    let new = CplbProcess::spawn(
        &yaml(&[&old.addr.to_string()], "", up.addr),
        Options::default(),
    );
    let logs = new.logs();
    println!("{logs}");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("handover")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let named = format!("cplb (pid {})", old.child.id());
    assert!(
        lines[0].contains(&named) && lines[0].contains(&format!("127.0.0.1:{port}")),
        "{} should name {named}",
        lines[0]
    );
    for w in ["unexpected", "unidentified"] {
        assert_eq!(new.count_logs(w), 0, "{logs}");
    }
    // Alone on its address: nothing of the kind.
    for w in OTHER_LINES {
        assert_eq!(old.count_logs(w), 0, "{}", old.logs());
    }
}

#[test]
fn a_listener_whose_process_is_out_of_sight_is_unidentified() {
    // As in a pod: cplb in its own PID namespace (and /proc) sees no other
    // process, so it can only give the socket's uid.
    let test = "a_listener_whose_process_is_out_of_sight_is_unidentified";
    if !require::root(test, "unshare --pid --mount-proc")
        || !require::tool(test, "unshare", "util-linux")
    {
        return;
    }
    let (_other, addr) = reuseport_listener();
    let path = temp_dir("listen").join("cplb.yaml");
    std::fs::write(&path, yaml(&[&addr.to_string()], "", refused_addr())).unwrap();
    let mut child = Command::new("unshare")
        .args(["--pid", "--mount-proc", "--kill-child", "--"])
        .arg(env!("CARGO_BIN_EXE_cplb"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut logs = Vec::new();
    let end = Instant::now() + DEADLINE;
    while !logs.iter().any(|l: &String| l.contains("cplb started")) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => logs.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.join("\n");
    println!("{logs}");
    assert!(logs.contains("cplb started"), "{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("unidentified"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("uid=0")
            && lines[0].contains(&addr.to_string()),
        "{}",
        lines[0]
    );
    assert!(
        !logs.contains("handover:") && !logs.contains("unexpected:"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_on_a_fixed_port_logs_no_other_listener() {
    let up = FakeUpstream::start("m").await;
    // A port that was free a moment ago; if something grabs it meanwhile,
    // cplb fails to start and the test says so.
    let addr = refused_addr();
    let p = CplbProcess::spawn(&yaml(&[&addr.to_string()], "", up.addr), Options::default());
    assert_eq!(p.addr, addr);
    for w in OTHER_LINES {
        assert_eq!(p.count_logs(w), 0, "{}", p.logs());
    }
}
