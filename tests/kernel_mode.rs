//! cplb in kernel mode, as a real process (root, clang-built programs,
//! cgroup v2): `dataplane.cgroup` is a cgroup of the test's own, holding
//! only the test's client processes, and `dataplane.bpffs` a private
//! bpffs, so nothing outside the test is rewritten or left pinned.
//! Masters announce who they are; whether the proxy carried a connection
//! is read from `cplb_client_connections_active` while it is open.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::kplane::{self, Connect, Env, Net};
use common::process::{CplbProcess, Options, temp_dir};
use common::{DEADLINE, FakeUpstream, free_port};

/// Not a test: the client process the tests start inside their cgroup
/// (`common::kplane::Client`).
#[test]
#[ignore = "the client process of the kernel tests, run by them"]
fn client_process() {
    if let Ok(procs) = std::env::var(kplane::CLIENT_ENV) {
        kplane::serve(&procs);
    }
}

fn yaml(env: &Env, mode: &str, port: u16, masters: &[&FakeUpstream], check: &str) -> String {
    let tls = if check == "https" {
        "  tls:\n    insecure_skip_verify: true\n"
    } else {
        ""
    };
    let mut y = format!(
        "listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:0\nshutdown_grace: 1s\n\
         hash:\n  key: node\n  node_id: node-7\n\
         health_check:\n  mode: {check}\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n  fall: 1\n{tls}\
         dataplane:\n  mode: {mode}\n  cgroup: {}\n  bpffs: {}\nupstreams:\n",
        env.cgroup.path.display(),
        env.bpffs.path.display()
    );
    // Passive health off: only the active check moves the choice here.
    for m in masters {
        y.push_str(&format!("  - address: \"{}\"\n    max_fails: 0\n", m.addr));
    }
    y
}

/// Masters "a", "b" and "c".
fn three(net: &Net) -> [FakeUpstream; 3] {
    ["a", "b", "c"].map(|n| net.serve(n, "127.0.0.1:0"))
}

/// The masters' names in the order the proxy's choice walks them for
/// `hash.key: node`, `node_id: node-7`.
fn walk(masters: &[&FakeUpstream]) -> Vec<String> {
    let texts: Vec<String> = masters.iter().map(|m| m.addr.to_string()).collect();
    let ring = cplb::ring::Ring::new(texts.iter().map(|t| (t.as_str(), 1))).unwrap();
    ring.walk(cplb::ring::hash_key(b"node-7"))
        .map(|i| masters[i].name.clone())
        .collect()
}

/// A blocking GET on the admin endpoint: the body.
fn get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `name` (no labels) or `name{labels}` from /metrics.
fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = get(admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

/// Connections the proxy carries now.
fn proxied(admin: SocketAddr) -> f64 {
    metric(admin, "cplb_client_connections_active")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn greeting(c: &Connect) -> Option<&str> {
    match c {
        Connect::Ok { greeting, .. } => Some(greeting),
        Connect::Err(_) => None,
    }
}

/// The daemon rewrites a connect from the cgroup to the master the proxy
/// would choose; getpeername shows the listen address; the proxy carries
/// nothing. The home marked down by the active check stops being chosen
/// (the next on the walk, still not through the proxy) and its rewritten
/// connection is closed; its return makes it the choice again. /status,
/// `cplb status` and the metrics say kernel; the kernel's connects are in
/// the proxy's series.
#[test]
fn the_daemon_rewrites_to_the_proxys_choice_and_follows_the_active_check() {
    let Some(env) = Env::new("the_daemon_rewrites_to_the_proxys_choice") else {
        return;
    };
    let net = Net::new();
    let ups = three(&net);
    let masters: Vec<&FakeUpstream> = ups.iter().collect();
    let order = walk(&masters);
    println!("the proxy's walk for node-7: {order:?}");
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cplb = CplbProcess::spawn(
        &yaml(&env, "kernel", port, &masters, "tcp"),
        Options::default(),
    );
    cplb.wait_for_log("kernel data plane tables published");
    let admin = cplb.admin.unwrap();
    let mut client = env.client();

    let got = client.connect(listen);
    let Connect::Ok {
        peer, id: first, ..
    } = &got
    else {
        panic!("{got:?}")
    };
    let first = *first;
    assert_eq!(
        greeting(&got),
        Some(order[0].as_str()),
        "the proxy's choice"
    );
    assert_eq!(*peer, listen, "getpeername shows the listen address");
    assert_eq!(proxied(admin), 0.0, "the proxy carries nothing");

    // Visibility.
    let status = get(admin, "/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    println!("/status dataplane: {}", v["dataplane"]);
    assert_eq!(v["dataplane"]["mode"], "kernel");
    assert_eq!(v["dataplane"]["configured"], "kernel");
    assert_eq!(metric(admin, "cplb_dataplane_mode{mode=\"kernel\"}"), 1.0);
    assert_eq!(metric(admin, "cplb_dataplane_mode{mode=\"proxy\"}"), 0.0);
    let home = ups.iter().find(|u| u.name == order[0]).unwrap().addr;
    let total = format!("cplb_connections_total{{upstream=\"{home}\"}}");
    let active = format!("cplb_connections_active{{upstream=\"{home}\"}}");
    wait_for("the kernel's connect in cplb_connections_total", || {
        metric(admin, &total) >= 1.0 && metric(admin, &active) >= 1.0
    });
    // /status: the kernel's view of each master.
    wait_for("the kernel's counters in /status", || {
        let v: serde_json::Value = serde_json::from_str(&get(admin, "/status")).unwrap();
        let ups = v["upstreams"].as_array().unwrap().clone();
        let at_home = ups
            .iter()
            .find(|u| u["address"] == home.to_string())
            .unwrap();
        let k = &at_home["kernel"];
        k["connects"].as_u64() >= Some(1) && k["open"].as_i64() == Some(1) && k["usable"] == true
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("data plane:   kernel"), "{text}");

    // The home stops: the active check marks it down, and the kernel
    // moves to the next on the walk within that probe.
    let idx = ups.iter().position(|u| u.name == order[0]).unwrap();
    let [a, b, c] = ups;
    let mut ups: Vec<Option<FakeUpstream>> = vec![Some(a), Some(b), Some(c)];
    let home_addr = net.stop(ups[idx].take().unwrap());
    cplb.wait_for_log("upstream marked down");
    let t0 = Instant::now();
    let mut failed = 0;
    loop {
        let got = client.connect(listen);
        match greeting(&got) {
            Some(g) => {
                assert_eq!(g, order[1], "the next on the proxy's walk");
                break;
            }
            None => failed += 1,
        }
        assert!(t0.elapsed() < DEADLINE, "never moved off the dead home");
    }
    println!(
        "after the active check's mark: {failed} connects failed, moved in {:?}",
        t0.elapsed()
    );
    assert_eq!(proxied(admin), 0.0, "still not through the proxy");
    // Its rewritten connection is closed (SOCK_DESTROY), as the proxy
    // closes its own (close_on_down), under the same label.
    wait_for("the dead home's connection closed", || !client.ping(first));
    let closed =
        format!("cplb_connections_closed_total{{reason=\"upstream_down\",upstream=\"{home}\"}}");
    assert_eq!(metric(admin, &closed), 1.0);
    let (alive, dead) = client.ping_all();
    println!("after the eviction: alive {alive:?}, dead {dead:?}");
    assert_eq!(dead, vec![first], "only the dead home's connection");

    // Back: the choice returns home.
    let back = net
        .rt
        .block_on(FakeUpstream::start_at(&order[0], home_addr));
    cplb.wait_for_log("upstream back up");
    wait_for("the home chosen again", || {
        greeting(&client.connect(listen)) == Some(order[0].as_str())
    });
    drop(back);
}

/// Every master marked down by the active check (https checks against
/// plain masters fail): the programs leave the connect alone, the proxy
/// takes it and its last resort reaches a master.
#[test]
fn with_no_usable_master_the_connect_reaches_the_proxy() {
    let Some(env) = Env::new("with_no_usable_master_the_connect_reaches_the_proxy") else {
        return;
    };
    let net = Net::new();
    let ups = [net.serve("a", "127.0.0.1:0"), net.serve("b", "127.0.0.1:0")];
    let masters: Vec<&FakeUpstream> = ups.iter().collect();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cplb = CplbProcess::spawn(
        &yaml(&env, "kernel", port, &masters, "https"),
        Options::default(),
    );
    cplb.wait_for_count("upstream marked down", 2);
    let admin = cplb.admin.unwrap();
    let mut client = env.client();
    // The maps follow the marks within a probe.
    wait_for("a connect carried by the proxy", || {
        let got = client.connect(listen);
        assert!(greeting(&got).is_some(), "{got:?}");
        proxied(admin) >= 1.0
    });
}

/// 50 rewritten connections survive a stop and a start of cplb; connects
/// while it is stopped still reach a master (the maps stay pinned); the
/// start adopts the pins. Then `cplb dataplane detach` leaves nothing
/// pinned, and a connect is no longer rewritten.
#[test]
fn connections_survive_a_restart_and_detach_leaves_nothing() {
    let Some(env) = Env::new("connections_survive_a_restart_and_detach_leaves_nothing") else {
        return;
    };
    let net = Net::new();
    let ups = [net.serve("a", "127.0.0.1:0"), net.serve("b", "127.0.0.1:0")];
    let masters: Vec<&FakeUpstream> = ups.iter().collect();
    let order = walk(&masters);
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = temp_dir("kmode");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, yaml(&env, "kernel", port, &masters, "tcp")).unwrap();
    let mut cplb = CplbProcess::spawn_with_file(path.clone(), Options::default());
    cplb.wait_for_log("kernel data plane tables published");
    let mut client = env.client();
    for _ in 0..50 {
        assert_eq!(greeting(&client.connect(listen)), Some(order[0].as_str()));
    }
    cplb.signal(libc::SIGTERM);
    assert_eq!(cplb.wait_exit(), Some(0), "{}", cplb.logs());
    drop(cplb);
    let (alive, dead) = client.ping_all();
    assert!(dead.is_empty(), "closed by the stop: {dead:?}");
    assert_eq!(alive.len(), 50);
    // No cplb runs: the pinned programs still choose.
    let got = client.connect(listen);
    assert_eq!(greeting(&got), Some(order[0].as_str()), "{got:?}");
    let mut cplb = CplbProcess::spawn_with_file(path.clone(), Options::default());
    let line = cplb.wait_for_log("kernel data plane attached");
    assert!(line.contains("adopted=true"), "{line}");
    let (alive2, dead) = client.ping_all();
    assert!(dead.is_empty(), "closed by the restart: {dead:?}");
    println!("{} connections alive across the restart", alive2.len());
    assert_eq!(alive2.len(), 51, "the 50, and the one made during the stop");
    cplb.signal(libc::SIGTERM);
    assert_eq!(cplb.wait_exit(), Some(0));
    drop(cplb);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["dataplane", "detach", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("detached"), "{said}");
    assert_eq!(env.bpffs.contents(), Vec::<String>::new(), "left pinned");
    let got = client.connect(listen);
    assert!(got.is_err(), "rewritten with nothing attached: {got:?}");
    // Established connections are the master's, not cplb's: still there.
    assert!(client.ping(alive2[0]));
}

/// Without capabilities (a non-root uid): `auto` serves through the proxy
/// with one line saying why; `kernel` refuses to start, naming them.
#[test]
fn without_capabilities_auto_proxies_and_kernel_refuses() {
    let Some(env) = Env::new("without_capabilities_auto_proxies_and_kernel_refuses") else {
        return;
    };
    const UID: u32 = 58443;
    let net = Net::new();
    let ups = [net.serve("a", "127.0.0.1:0")];
    let masters: Vec<&FakeUpstream> = ups.iter().collect();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = || Options {
        uid: Some(UID),
        ..Options::default()
    };
    let mut cplb = CplbProcess::spawn(&yaml(&env, "auto", port, &masters, "tcp"), opts());
    let why = "the kernel data plane cannot run here";
    let line = cplb.wait_for_log(why);
    println!("{line}");
    assert!(line.contains("CAP_BPF"), "{line}");
    let admin = cplb.admin.unwrap();
    let mut client = env.client();
    let got = client.connect(listen);
    assert_eq!(greeting(&got), Some("a"), "{got:?}");
    assert_eq!(proxied(admin), 1.0, "the proxy carries it");
    let v: serde_json::Value = serde_json::from_str(&get(admin, "/status")).unwrap();
    assert_eq!(v["dataplane"]["mode"], "proxy");
    assert!(
        v["dataplane"]["why_proxy"]
            .as_str()
            .unwrap()
            .contains("CAP_BPF")
    );
    assert_eq!(metric(admin, "cplb_dataplane_mode{mode=\"proxy\"}"), 1.0);
    assert_eq!(cplb.count_logs(why), 1, "one line");
    drop(cplb);

    let dir = temp_dir("kmode-refuse");
    let path = dir.join("cplb.yaml");
    std::fs::write(&path, yaml(&env, "kernel", port, &masters, "tcp")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"));
    cmd.arg("--config").arg(&path);
    {
        use std::os::unix::process::CommandExt;
        cmd.uid(UID).gid(UID);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        !out.status.success(),
        "kernel mode started without capabilities"
    );
    assert!(
        err.contains("missing capability CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
}

/// Fail-back of rewritten connections: three connects made while home was
/// down ran on the next master (displaced); once home is back they are
/// closed at `max_per_second` (1 here), counted as `failback` on the
/// master they ran on, and reconnects go home. A connection made at home
/// meanwhile is left alone.
#[test]
fn displaced_rewritten_connections_fail_back_at_the_rate() {
    let Some(env) = Env::new("displaced_rewritten_connections_fail_back_at_the_rate") else {
        return;
    };
    let net = Net::new();
    let ups = three(&net);
    let masters: Vec<&FakeUpstream> = ups.iter().collect();
    let order = walk(&masters);
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut y = yaml(&env, "kernel", port, &masters, "tcp");
    y.push_str("failback:\n  settle: 0s\n  spread: 0s\n  max_per_second: 1\n");
    let mut cplb = CplbProcess::spawn(&y, Options::default());
    cplb.wait_for_log("kernel data plane tables published");
    let admin = cplb.admin.unwrap();
    let mut client = env.client();
    let idx = ups.iter().position(|u| u.name == order[0]).unwrap();
    let next = ups.iter().find(|u| u.name == order[1]).unwrap().addr;
    let mut ups: Vec<Option<FakeUpstream>> = ups.into_iter().map(Some).collect();
    let home_addr = net.stop(ups[idx].take().unwrap());
    cplb.wait_for_log("upstream marked down");
    let mut displaced = Vec::new();
    let end = Instant::now() + DEADLINE;
    while displaced.len() < 3 {
        assert!(Instant::now() < end, "no connects to the next master");
        if let Connect::Ok { id, greeting, .. } = client.connect(listen) {
            assert_eq!(greeting, order[1]);
            displaced.push(id);
        }
    }
    let back = net
        .rt
        .block_on(FakeUpstream::start_at(&order[0], home_addr));
    cplb.wait_for_log("upstream back up");
    let at_home = client.connect(listen);
    let Connect::Ok { id: at_home, .. } = at_home else {
        panic!("{at_home:?}")
    };
    let t0 = Instant::now();
    let mut closed_at = Vec::new();
    let end = t0 + DEADLINE;
    while closed_at.len() < displaced.len() {
        assert!(Instant::now() < end, "closed so far: {closed_at:?}");
        let (_, dead) = client.ping_all();
        for id in dead {
            if displaced.contains(&id) && !closed_at.iter().any(|(i, _)| *i == id) {
                closed_at.push((id, t0.elapsed()));
            }
            assert_ne!(id, at_home, "a connection at home was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("fail-back closes after home came back: {closed_at:?}");
    let spread = closed_at[2].1 - closed_at[0].1;
    assert!(
        spread >= Duration::from_millis(1500),
        "3 closes at 1/s took {spread:?}"
    );
    let closed =
        format!("cplb_connections_closed_total{{reason=\"failback\",upstream=\"{next}\"}}");
    assert_eq!(metric(admin, &closed), 3.0);
    assert!(client.ping(at_home));
    let got = client.connect(listen);
    assert_eq!(
        greeting(&got),
        Some(order[0].as_str()),
        "reconnects go home"
    );
    cplb.wait_for_log("fail-back episode for rewritten connections ended");
    drop(back);
}

/// Two daemons on one host, one on an IPv4 and one on an IPv6 listen
/// address, attached to the same cgroup: each rewrites only connects to
/// its own address, to its own master, and getpeername shows each one's
/// listen address. A client of the cgroup in another network namespace
/// connecting to its own 127.0.0.1 and the first daemon's port is never
/// rewritten.
#[test]
fn two_daemons_ipv4_and_ipv6_each_rewrite_their_own_and_not_another_netns() {
    let Some(env) = Env::new("two_daemons_ipv4_and_ipv6") else {
        return;
    };
    let net = Net::new();
    let a = net.serve("a", "127.0.0.1:0");
    let c6 = net.serve("c6", "[::1]:0");
    let (p4, p6) = (free_port(), free_port());
    let listen4: SocketAddr = format!("127.0.0.1:{p4}").parse().unwrap();
    let listen6: SocketAddr = format!("[::1]:{p6}").parse().unwrap();
    let y4 = yaml(&env, "kernel", p4, &[&a], "tcp");
    let y6 = yaml(&env, "kernel", p6, &[&c6], "tcp").replace(
        &format!("listen: 127.0.0.1:{p6}"),
        &format!("listen: \"{listen6}\""),
    );
    let mut one = CplbProcess::spawn(&y4, Options::default());
    let mut two = CplbProcess::spawn(&y6, Options::default());
    one.wait_for_log("kernel data plane tables published");
    two.wait_for_log("kernel data plane tables published");
    let mut client = env.client();
    for (listen, want, admin) in [
        (listen4, "a", one.admin.unwrap()),
        (listen6, "c6", two.admin.unwrap()),
    ] {
        let got = client.connect(listen);
        let Connect::Ok { greeting, peer, .. } = &got else {
            panic!("{listen}: {got:?}")
        };
        assert_eq!((greeting.as_str(), *peer), (want, listen));
        assert_eq!(proxied(admin), 0.0, "{listen}: not through the proxy");
    }
    let mut inside = env.client();
    inside.enter_netns(p4);
    let got = inside.connect(listen4);
    assert_eq!(greeting(&got), Some("netns"), "{got:?}");
}
