//! Who is calling (issue 22, proxy mode): local clients named by process,
//! pod or uid in the metrics, `/clients` and `cplb status --clients`;
//! per-client limits; fair share near `max_connections`; the number of
//! names bounded.
//!
//! The clients are this test binary, copied (or linked) under other names
//! and run as `child_client`: the name a process runs under is its
//! `/proc/PID/comm`, which is what cplb names it by.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::process::*;
use common::*;
use serde_json::Value;

const CHILD_ENV: &str = "CPLB_TEST_CLIENT";

/// Not a test of its own: the client program the tests below run. Given
/// `addr,n`, it waits for a line on stdin, opens `n` connections one after
/// another, each served (the upstream's name arrives) or refused (closed
/// at once), prints `CLIENT served=S refused=R`, and holds the served ones
/// until stdin closes.
#[test]
fn child_client() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (addr, n) = spec.split_once(',').unwrap();
    let (addr, n): (SocketAddr, usize) = (addr.parse().unwrap(), n.parse().unwrap());
    let mut stdin = std::io::stdin().lock();
    let mut go = String::new();
    stdin.read_line(&mut go).unwrap();
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..n {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            refused += 1;
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(k) if k > 0 => held.push(s),
            _ => refused += 1,
        }
    }
    println!("CLIENT served={} refused={refused}", held.len());
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
}

/// A running client program.
struct ClientProc {
    child: Child,
    served: usize,
    refused: usize,
}

impl ClientProc {
    /// Runs `exe` (a copy or link of this binary) as a client of `addr`
    /// with `n` connections; `setup` may move it (by pid) before it starts.
    fn run(
        exe: &Path,
        addr: SocketAddr,
        n: usize,
        uid: Option<u32>,
        setup: impl FnOnce(u32),
    ) -> ClientProc {
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "child_client",
            "--nocapture",
            "--test-threads",
            "1",
            "-q",
        ])
        .env(CHILD_ENV, format!("{addr},{n}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        // ETXTBSY: another test's fork may still hold the copy open for
        // writing until it execs; that passes within milliseconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut child = loop {
            match cmd.spawn() {
                Err(e)
                    if e.raw_os_error() == Some(libc::ETXTBSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                r => break r.unwrap(),
            }
        };
        setup(child.id());
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the client ended without its line"
            );
            if let Some(rest) = line.trim().strip_prefix("CLIENT ") {
                let num = |k: &str| -> usize {
                    rest.split(' ')
                        .find_map(|f| f.strip_prefix(k))
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                let (served, refused) = (num("served="), num("refused="));
                return ClientProc {
                    child,
                    served,
                    refused,
                };
            }
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if wait_child(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This binary under `name` in `dir` (a copy: a process's comm is its
/// executable's file name).
fn client_named(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(std::env::current_exe().unwrap(), &to).unwrap();
    // Readable and runnable by another uid (the fair-share test's user).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

async fn clients_json(admin: SocketAddr) -> Value {
    let (code, _, body) = http(admin, "GET", "/clients").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `/clients` once it shows `name` with `open` connections: without a
/// limit configured a connection does not wait for its name, which comes
/// a moment later.
async fn named(admin: SocketAddr, name: &str, open: u64) -> Value {
    let mut last = Value::Null;
    eventually(Duration::from_secs(10), async || {
        last = clients_json(admin).await;
        let found = last["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name && c["open"] == open);
        found.then(|| last.clone())
    })
    .await
    .unwrap_or_else(|_| panic!("{name} with {open} open never in /clients: {last:#}"))
}

fn entry<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in /clients: {doc:#}"))
}

async fn scrape(admin: SocketAddr) -> metrics::Scrape {
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    metrics::Scrape::parse(&body)
}

fn status_clients(admin: SocketAddr) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--clients", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn spawn_cplb(
    upstream: SocketAddr,
    clients: &str,
    extra: &[(&str, &str)],
    uid: Option<u32>,
) -> CplbProcess {
    let mut c = TestConfig::new(&[upstream]).admin().section(clients);
    for (k, v) in extra {
        c = c.set(k, v);
    }
    CplbProcess::spawn(
        &c.yaml(),
        Options {
            uid,
            ..Default::default()
        },
    )
}

/// Two copies of one program: each is named; the one limited to 20
/// connections holds 20 and is refused the rest (counted, logged once),
/// the other's 10 are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_programs_are_named_and_one_is_held_to_its_limit() {
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(
        up.addr,
        "clients:\n  limits:\n    - match: {process: \"cli-al*\"}\n      max_connections: 20\n",
        &[],
        None,
    );
    let admin = p.admin.unwrap();
    let dir = temp_dir("clients-two");
    let (alpha, beta) = (
        client_named(&dir, "cli-alpha"),
        client_named(&dir, "cli-beta"),
    );
    let a = ClientProc::run(&alpha, p.addr, 30, None, |_| {});
    let b = ClientProc::run(&beta, p.addr, 10, None, |_| {});
    println!(
        "cli-alpha: served {} refused {}; cli-beta: served {} refused {}",
        a.served, a.refused, b.served, b.refused
    );
    assert_eq!((a.served, a.refused), (20, 10), "{}", p.logs());
    assert_eq!((b.served, b.refused), (10, 0), "{}", p.logs());

    let m = scrape(admin).await;
    assert_eq!(
        m.get(
            "cplb_client_connections",
            &[("client", "process:cli-alpha")]
        ),
        20.0
    );
    assert_eq!(
        m.get("cplb_client_connections", &[("client", "process:cli-beta")]),
        10.0
    );
    assert_eq!(
        m.get(
            "cplb_client_connections_total",
            &[("client", "process:cli-beta")]
        ),
        10.0
    );
    assert_eq!(
        m.get(
            "cplb_client_refused_total",
            &[
                ("client", "process:cli-alpha"),
                ("reason", "max_connections")
            ]
        ),
        10.0
    );
    assert_eq!(
        m.get(
            "cplb_client_refused_total",
            &[
                ("client", "process:cli-beta"),
                ("reason", "max_connections")
            ]
        ),
        0.0
    );

    let doc = clients_json(admin).await;
    println!("{doc:#}");
    assert_eq!(doc["visibility"], "full");
    let e = entry(&doc, "process:cli-alpha");
    assert_eq!(e["open"], 20);
    assert_eq!(e["pids"][0], a.child.id());
    assert_eq!(e["masters"][0], up.addr.to_string());
    assert_eq!(entry(&doc, "process:cli-beta")["pids"][0], b.child.id());

    let text = status_clients(admin);
    println!("{text}");
    for name in ["process:cli-alpha", "process:cli-beta"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        assert!(line.contains(&up.addr.to_string()), "{line}");
    }
    assert_eq!(p.count_logs("client over its limit"), 1, "{}", p.logs());
    drop((a, b));
    let _ = std::fs::remove_dir_all(dir);
}

/// Not root, cplb cannot see other users' processes: it names their
/// clients by uid and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_names_by_uid_and_says_why() {
    if !require::root(
        "unprivileged_names_by_uid_and_says_why",
        "to run cplb as another uid",
    ) {
        return;
    }
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(up.addr, "clients: {}\n", &[], Some(65534));
    let admin = p.admin.unwrap();
    let dir = temp_dir("clients-uid");
    let c = ClientProc::run(&client_named(&dir, "cli-root"), p.addr, 3, None, |_| {});
    assert_eq!(c.served, 3);
    let doc = named(admin, "uid:0", 3).await;
    assert_eq!(doc["visibility"], "uid_only", "{doc:#}");
    assert!(doc["why"].as_str().unwrap().contains("not root"), "{doc:#}");
    let text = status_clients(admin);
    println!("{text}");
    assert!(
        text.starts_with("uid only: cplb runs as uid 65534"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("uid:0 ")), "{text}");
    drop(c);
    let _ = std::fs::remove_dir_all(dir);
}

/// A user holding more than `max_connections` allows cannot lock others
/// out: near the limit it is the one refused, and a newcomer gets 40 of 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_lets_a_small_client_in_past_a_hog() {
    if !require::root(
        "fair_share_lets_a_small_client_in_past_a_hog",
        "to run the hog as another user",
    ) {
        return;
    }
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(
        up.addr,
        "clients: {}\n",
        &[("max_connections", "200")],
        None,
    );
    let dir = temp_dir("clients-fair");
    let hog = ClientProc::run(
        &client_named(&dir, "cli-hog"),
        p.addr,
        240,
        Some(65534),
        |_| {},
    );
    let small = ClientProc::run(&client_named(&dir, "cli-small"), p.addr, 40, None, |_| {});
    println!(
        "hog (uid 65534): served {} refused {}; small (root): served {} of 40",
        hog.served, hog.refused, small.served
    );
    assert!(hog.served < 200, "the hog took {}", hog.served);
    assert_eq!(small.served, 40, "{}", p.logs());
    let m = scrape(p.admin.unwrap()).await;
    assert_eq!(
        m.get(
            "cplb_client_refused_total",
            &[("client", "process:cli-hog"), ("reason", "fair_share")]
        ),
        hog.refused as f64
    );
    drop((hog, small));
    let _ = std::fs::remove_dir_all(dir);
}

/// Many distinct short-lived processes leave at most `max_names` + 1
/// (`other`) series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_lived_processes_stay_within_max_names() {
    const MAX: usize = 8;
    const PROCS: usize = 60;
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(
        up.addr,
        &format!("clients:\n  max_names: {MAX}\n"),
        &[],
        None,
    );
    let admin = p.admin.unwrap();
    let dir = temp_dir("clients-many");
    let exe = client_named(&dir, "cli-base");
    let mut most = 0;
    for batch in 0..PROCS / 6 {
        let running: Vec<ClientProc> = (0..6)
            .map(|i| {
                let link = dir.join(format!("cli-n{}", batch * 6 + i));
                std::os::unix::fs::symlink(&exe, &link).unwrap();
                ClientProc::run(&link, p.addr, 1, None, |_| {})
            })
            .collect();
        assert!(running.iter().all(|c| c.served == 1));
        // Named while they live (a process gone before it is looked at
        // would be named by its uid).
        for i in 0..6 {
            named(admin, &format!("process:cli-n{}", batch * 6 + i), 1).await;
        }
        drop(running);
        let m = scrape(admin).await;
        let names = m
            .samples
            .iter()
            .filter(|s| s.name == "cplb_client_connections_total")
            .count();
        most = most.max(names);
        assert!(names <= MAX + 1, "{names} series after batch {batch}");
    }
    // The last batch's names may come a moment after its connections.
    let full = eventually(Duration::from_secs(10), async || {
        let m = scrape(admin).await;
        let n = m
            .samples
            .iter()
            .filter(|s| s.name == "cplb_client_connections_total")
            .count();
        (n == MAX + 1).then_some(n)
    })
    .await;
    most = most.max(full.unwrap_or(0));
    let doc = clients_json(admin).await;
    let other = entry(&doc, "other");
    println!("{PROCS} processes: at most {most} series (max_names {MAX}); other: {other}");
    assert_eq!(most, MAX + 1, "the names filled up to max_names, and other");
    let _ = std::fs::remove_dir_all(dir);
}

/// A client in a pod's cgroup (as kubelet names them, cgroupfs layout,
/// under a cgroup v2 directory this test makes) is named by its pod UID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_pod_cgroup_is_named_by_its_pod_uid() {
    const T: &str = "a_client_in_a_pod_cgroup_is_named_by_its_pod_uid";
    const ROOT: &str = "/sys/fs/cgroup/unified";
    if !require::root(T, "to make and enter a cgroup") {
        return;
    }
    if !Path::new(ROOT).join("cgroup.procs").is_file()
        && !require::missing(T, "a cgroup v2 hierarchy at /sys/fs/cgroup/unified")
    {
        return;
    }
    let pod = "5f1c2e3d-4b5a-4c6d-8e7f-9a0b1c2d3e4f";
    let base = Path::new(ROOT).join(format!("cplb-test-{}", std::process::id()));
    let cg = base.join(format!("kubepods/burstable/pod{pod}/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
    std::fs::create_dir_all(&cg).unwrap();
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(up.addr, "clients: {}\n", &[], None);
    let dir = temp_dir("clients-pod");
    let c = ClientProc::run(&client_named(&dir, "cli-inpod"), p.addr, 2, None, |pid| {
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).unwrap();
    });
    assert_eq!(c.served, 2);
    named(p.admin.unwrap(), &format!("pod:{pod}"), 2).await;
    drop(c);
    // The cgroups can go once the client has.
    let mut dirs: Vec<PathBuf> = cg
        .ancestors()
        .take_while(|d| d.starts_with(&base))
        .map(Path::to_path_buf)
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A reload applies new limits to the next connection and closes none:
/// 15 open under a limit of 20 stay open when it becomes 10, and the next
/// one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_limits_without_closing_connections() {
    let up = FakeUpstream::start("m1").await;
    let limit = |n: u32| {
        format!(
            "clients:\n  limits:\n    - match: {{process: \"cli-re\"}}\n      max_connections: {n}\n"
        )
    };
    let p = spawn_cplb(up.addr, &limit(20), &[], None);
    let admin = p.admin.unwrap();
    let dir = temp_dir("clients-reload");
    let exe = client_named(&dir, "cli-re");
    let first = ClientProc::run(&exe, p.addr, 15, None, |_| {});
    assert_eq!(first.served, 15);
    let yaml = TestConfig::new(&[up.addr])
        .admin_at(&admin.to_string())
        .section(&limit(10))
        .yaml();
    std::fs::write(&p.config_path, yaml).unwrap();
    p.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), async || {
        let m = scrape(admin).await;
        (m.get("cplb_config_reloads_total", &[("result", "success")]) >= 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("no reload: {}", p.logs()));
    let next = ClientProc::run(&exe, p.addr, 1, None, |_| {});
    assert_eq!((next.served, next.refused), (0, 1), "{}", p.logs());
    let m = scrape(admin).await;
    assert_eq!(
        m.get("cplb_client_connections", &[("client", "process:cli-re")]),
        15.0,
        "the open ones stayed open"
    );
    drop((first, next));
    let _ = std::fs::remove_dir_all(dir);
}

/// Over `max_new_per_second` (a bucket with a burst of the same size), new
/// connections are closed at once and counted under `rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_refuses_past_its_burst() {
    let up = FakeUpstream::start("m1").await;
    let p = spawn_cplb(
        up.addr,
        "clients:\n  limits:\n    - match: {process: \"cli-rate\"}\n      max_new_per_second: 5\n",
        &[],
        None,
    );
    let dir = temp_dir("clients-rate");
    let started = std::time::Instant::now();
    let c = ClientProc::run(&client_named(&dir, "cli-rate"), p.addr, 50, None, |_| {});
    let secs = started.elapsed().as_secs_f64();
    println!(
        "50 tries in {secs:.2} s: {} served, {} refused",
        c.served, c.refused
    );
    // The burst, and what refilled meanwhile.
    assert!(c.served >= 5, "{}", p.logs());
    assert!(
        (c.served as f64) <= 5.0 + 5.0 * secs + 1.0,
        "{} served",
        c.served
    );
    let m = scrape(p.admin.unwrap()).await;
    assert_eq!(
        m.get(
            "cplb_client_refused_total",
            &[("client", "process:cli-rate"), ("reason", "rate")]
        ),
        c.refused as f64
    );
    assert_eq!(p.count_logs("client over its limit"), 1, "{}", p.logs());
    drop(c);
    let _ = std::fs::remove_dir_all(dir);
}
