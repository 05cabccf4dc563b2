//! A bounded soak of the `cplb` binary. Opt-in: `.ci/run` runs it with
//! `cargo test --test soak -- --ignored --nocapture` (CPLB_SOAK_SECS, default
//! 60; CPLB_SOAK_SEED replays a run).
//!
//! Clients keep echo sessions going (every byte compared, with a CRC32 per
//! session) plus a stream of short connections, while a seeded random
//! schedule kills and restarts masters, blackholes one, rewrites the config
//! (the watcher reloads it) and sends SIGHUP.
//!
//! Asserted: no corrupted byte; no failed connect among the attempts that
//! *count*: those that began with at least one master serving and during
//! which no master went down (a master killed mid-attempt can take the
//! attempt with it: the proxy had already handed the client to it, as nginx
//! does); no session stalled; and the process's descriptors, threads and
//! RSS return to their baseline once the load stops.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const MASTERS: usize = 3;
const SESSIONS: usize = 6;
const SHORT: usize = 2;

/// xorshift64*: small, seeded, good enough for a schedule and payloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What the schedule and the clients agree on about one master.
#[derive(Default)]
struct Mark {
    serving: AtomicBool,
    /// Bumped when the master starts to stop serving and again once it has
    /// stopped (its listener and queued connections gone): odd while dying.
    downs: AtomicU64,
}

enum Master {
    Serving(CancellationToken, tokio::task::JoinHandle<()>),
    Blackholed(Blackhole),
    Dead,
}

/// An echo master that announces its name; `stop` closes its listener and
/// every connection it has, as a killed process would.
async fn serve(name: String, addr: SocketAddr) -> Master {
    let l = TcpListener::bind(addr)
        .await
        .expect("rebind master address");
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut c, _) = tokio::select! {
                _ = s.cancelled() => return,
                r = l.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let (s, line) = (s.clone(), format!("{name}\n"));
            tokio::spawn(async move {
                tokio::select! {
                    _ = s.cancelled() => {}
                    _ = async {
                        if c.write_all(line.as_bytes()).await.is_ok() {
                            let (mut r, mut w) = c.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    } => {}
                }
            });
        }
    });
    Master::Serving(stop, task)
}

async fn kill(m: Master) {
    match m {
        Master::Serving(stop, task) => {
            stop.cancel();
            let _ = task.await;
        }
        Master::Blackholed(b) => drop(b),
        Master::Dead => {}
    }
}

#[derive(Default)]
struct Counters {
    counted: AtomicU64,
    counted_failed: AtomicU64,
    excused: AtomicU64,
    excused_failed: AtomicU64,
    bytes_checked: AtomicU64,
    corrupted: AtomicU64,
    /// Sessions whose CRC32 of the bytes echoed differs from what was sent.
    crc_mismatches: AtomicU64,
    sessions: AtomicU64,
    broken: AtomicU64,
    stalled: AtomicU64,
    short_done: AtomicU64,
    /// What each counted failure was, for the report.
    failures: std::sync::Mutex<Vec<String>>,
}

/// One connect attempt through the proxy, up to the master's greeting,
/// classified as counted or excused by the masters' marks around it.
async fn attempt(proxy: SocketAddr, marks: &[Mark], c: &Counters) -> Option<BufReader<TcpStream>> {
    let before: Vec<(bool, u64)> = marks
        .iter()
        .map(|m| (m.serving.load(SeqCst), m.downs.load(SeqCst)))
        .collect();
    let started = Instant::now();
    let mut local = None;
    let result: Result<BufReader<TcpStream>, String> = async {
        let s = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect to the proxy: {e}"))?;
        local = s.local_addr().ok();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        match tokio::time::timeout(DEADLINE, r.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 && line.starts_with('m') => Ok(r),
            Ok(Ok(0)) => Err("closed before the greeting".into()),
            Ok(Ok(_)) => Err(format!("unexpected greeting {line:?}")),
            Ok(Err(e)) => Err(format!("reading the greeting: {e}")),
            Err(_) => Err("no greeting within the deadline".into()),
        }
    }
    .await;
    let any_serving = before.iter().any(|b| b.0);
    // `downs` is odd while a kill is under way: the dying listener resets
    // the connections it queued, and the client may see that before the
    // kill returns and bumps `downs` again.
    let none_went_down = marks.iter().zip(&before).all(|(m, b)| {
        let now = m.downs.load(SeqCst);
        now == b.1 && now % 2 == 0
    });
    if any_serving && none_went_down {
        c.counted.fetch_add(1, Relaxed);
        if let Err(e) = &result {
            c.counted_failed.fetch_add(1, Relaxed);
            c.failures.lock().unwrap().push(format!(
                "client {local:?}: {e} after {:?}; masters serving at the start: {:?}",
                started.elapsed(),
                before.iter().map(|b| b.0).collect::<Vec<_>>()
            ));
        }
    } else {
        c.excused.fetch_add(1, Relaxed);
        if result.is_err() {
            c.excused_failed.fetch_add(1, Relaxed);
        }
    }
    result.ok()
}

/// Echo sessions: random chunks, every byte compared, until `stop`.
async fn session(
    id: u64,
    seed: u64,
    proxy: SocketAddr,
    marks: Arc<Vec<Mark>>,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut sent = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    while !stop.load(Relaxed) {
        let Some(mut conn) = attempt(proxy, &marks, &c).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        c.sessions.fetch_add(1, Relaxed);
        let (mut crc_sent, mut crc_got) = (crc32fast::Hasher::new(), crc32fast::Hasher::new());
        while !stop.load(Relaxed) {
            let len = 1 + rng.below(sent.len() as u64) as usize;
            rng.fill(&mut sent[..len]);
            if conn.get_mut().write_all(&sent[..len]).await.is_err() {
                c.broken.fetch_add(1, Relaxed);
                break;
            }
            let mut have = 0;
            let mut ended = false;
            while have < len {
                match tokio::time::timeout(DEADLINE, conn.read(&mut got[have..len])).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        ended = true;
                        break;
                    }
                    Ok(Ok(n)) => have += n,
                    Err(_) => {
                        c.stalled.fetch_add(1, Relaxed);
                        ended = true;
                        break;
                    }
                }
            }
            let bad = sent[..have]
                .iter()
                .zip(&got[..have])
                .filter(|(a, b)| a != b)
                .count();
            c.corrupted.fetch_add(bad as u64, Relaxed);
            c.bytes_checked.fetch_add(have as u64, Relaxed);
            crc_sent.update(&sent[..have]);
            crc_got.update(&got[..have]);
            if ended {
                // The master died under the session: reconnect.
                c.broken.fetch_add(1, Relaxed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        }
        if crc_sent.finalize() != crc_got.finalize() {
            c.crc_mismatches.fetch_add(1, Relaxed);
        }
    }
}

/// Short connections: connect, one echo, close.
async fn short(proxy: SocketAddr, marks: Arc<Vec<Mark>>, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        let Some(mut conn) = attempt(proxy, &marks, &c).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut line = String::new();
        if conn.get_mut().write_all(b"ping\n").await.is_ok()
            && matches!(
                tokio::time::timeout(DEADLINE, conn.read_line(&mut line)).await,
                Ok(Ok(5))
            )
        {
            if line != "ping\n" {
                c.corrupted.fetch_add(5, Relaxed);
            }
            c.short_done.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    /// Descriptors other than pipes.
    fds: usize,
    /// Pipe ends: the splice free lists keep drained pipes for reuse.
    pipes: usize,
    tasks: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let pipes = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0);
    Usage {
        fds: count("fd").saturating_sub(pipes),
        pipes,
        tasks: count("task"),
        rss_kib,
    }
}

fn cplb_yaml(masters: &[SocketAddr], idle: &str) -> String {
    TestConfig::new(masters)
        .shutdown_grace("1s")
        .set("connect_timeout", "1s")
        .idle_timeout(idle)
        .hash_key("connection")
        .health_check(
            HealthCheck::tcp()
                .interval("300ms")
                .timeout("300ms")
                .rise(2)
                .fall(2),
        )
        .fail_timeout(Some("2s"))
        .each_upstream("max_fails", 1)
        .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak (about a minute): cargo test --test soak -- --ignored --nocapture"]
async fn soak_masters_die_return_and_blackhole_under_reloads() {
    let secs: u64 = std::env::var("CPLB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("CPLB_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("soak: {secs} s, seed {seed} (replay with CPLB_SOAK_SEED={seed})");
    let mut rng = Rng(seed);

    // Masters on fixed addresses, so a restart comes back where the config
    // points.
    let mut addrs = Vec::new();
    let mut masters = Vec::new();
    for i in 0..MASTERS {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        masters.push(serve(format!("m{i}"), a).await);
        addrs.push(a);
    }
    let marks: Arc<Vec<Mark>> = Arc::new((0..MASTERS).map(|_| Mark::default()).collect());
    for m in marks.iter() {
        m.serving.store(true, SeqCst);
    }

    // Debug lines of the proxy name each client, so a counted failure can be
    // traced through cplb.
    let opts = Options {
        log_filter: Some("info,cplb::proxy=debug".into()),
        ..Options::default()
    };
    let mut p = CplbProcess::spawn(&cplb_yaml(&addrs, "10m"), opts);
    let pid = p.pid();
    // Warm up: a few connections through every worker, then let them go.
    for _ in 0..20 {
        let mut c = Client::connect(p.addr).await;
        c.ping("warm-up").await;
    }
    let base = settle(pid).await;
    let base_fds = fd_list(pid);
    println!("baseline: {base:?}");

    let (c, stop) = (
        Arc::new(Counters::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let mut load = Vec::new();
    for i in 0..SESSIONS {
        load.push(tokio::spawn(session(
            i as u64,
            seed,
            p.addr,
            marks.clone(),
            c.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..SHORT {
        load.push(tokio::spawn(short(
            p.addr,
            marks.clone(),
            c.clone(),
            stop.clone(),
        )));
    }

    let (mut kills, mut restarts, mut blackholes, mut reloads, mut hups) = (0, 0, 0, 0, 0);
    let mut peak = base;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        let i = rng.below(MASTERS as u64) as usize;
        match rng.below(10) {
            // Kill a serving master.
            0..=2 => {
                if matches!(masters[i], Master::Serving(..)) {
                    marks[i].serving.store(false, SeqCst);
                    marks[i].downs.fetch_add(1, SeqCst);
                    kill(std::mem::replace(&mut masters[i], Master::Dead)).await;
                    // Its listener closed only now: a connect that raced the
                    // kill was queued by the kernel, handed to cplb as
                    // established, then reset with the queue. An attempt
                    // that overlaps any part of the kill is excused.
                    marks[i].downs.fetch_add(1, SeqCst);
                    kills += 1;
                }
            }
            // Bring a dead or blackholed master back.
            3..=5 => {
                if !matches!(masters[i], Master::Serving(..)) {
                    kill(std::mem::replace(&mut masters[i], Master::Dead)).await;
                    masters[i] = serve(format!("m{i}"), addrs[i]).await;
                    marks[i].serving.store(true, SeqCst);
                    restarts += 1;
                }
            }
            // Blackhole a dead master (at most one at a time).
            6 => {
                let any = masters.iter().any(|m| matches!(m, Master::Blackholed(_)));
                if !any && matches!(masters[i], Master::Dead) {
                    let at = addrs[i];
                    let b = tokio::task::spawn_blocking(move || Blackhole::start_at(at))
                        .await
                        .unwrap();
                    masters[i] = Master::Blackholed(b);
                    blackholes += 1;
                }
            }
            // Rewrite the config: the watcher reloads it.
            7 | 8 => {
                let idle = if reloads % 2 == 0 { "11m" } else { "10m" };
                // Written aside and renamed over, as editors and the kubelet
                // do: any refusal is then a bug, not a half-written file.
                let tmp = p.config_path.with_extension("tmp");
                std::fs::write(&tmp, cplb_yaml(&addrs, idle)).unwrap();
                std::fs::rename(&tmp, &p.config_path).unwrap();
                reloads += 1;
            }
            _ => {
                p.signal(libc::SIGHUP);
                hups += 1;
            }
        }
        let u = usage(pid);
        peak = Usage {
            fds: peak.fds.max(u.fds),
            pipes: peak.pipes.max(u.pipes),
            tasks: peak.tasks.max(u.tasks),
            rss_kib: peak.rss_kib.max(u.rss_kib),
        };
        assert!(p.is_running(), "cplb died:\n{}", p.logs());
    }

    // Everything back up, the load stopped, the connections closed.
    for i in 0..MASTERS {
        if !matches!(masters[i], Master::Serving(..)) {
            kill(std::mem::replace(&mut masters[i], Master::Dead)).await;
            masters[i] = serve(format!("m{i}"), addrs[i]).await;
            marks[i].serving.store(true, SeqCst);
        }
    }
    stop.store(true, SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let after = settle_to(pid, base).await;

    let get = |a: &AtomicU64| a.load(SeqCst);
    println!(
        "chaos: {kills} kills, {restarts} restarts, {blackholes} blackholes, {reloads} config rewrites, {hups} SIGHUPs; \
         cplb logged {} reloads, {} refusals",
        p.count_logs("config reloaded"),
        p.count_logs("config reload refused")
    );
    println!(
        "connects: {} counted, {} of them failed; {} excused (a master went down during them or none was serving), {} of them failed",
        get(&c.counted),
        get(&c.counted_failed),
        get(&c.excused),
        get(&c.excused_failed)
    );
    println!(
        "sessions: {} opened, {} ended by a dying master, {} stalled; {} bytes echoed and compared, {} corrupted, {} session CRC32 mismatches; {} short connections",
        get(&c.sessions),
        get(&c.broken),
        get(&c.stalled),
        get(&c.bytes_checked),
        get(&c.corrupted),
        get(&c.crc_mismatches),
        get(&c.short_done)
    );
    println!("resources: baseline {base:?}, peak {peak:?}, after {after:?}");
    for l in p.logs().lines().filter(|l| l.contains("reload refused")) {
        println!("  cplb: {l}");
    }
    let failures = c.failures.lock().unwrap().clone();
    for f in &failures {
        println!("counted failure: {f}");
    }
    if !failures.is_empty() {
        // cplb's side of it: health transitions, evictions, reloads, and
        // every line about the failed clients.
        let clients: Vec<String> = failures
            .iter()
            .filter_map(|f| {
                f.split("Some(")
                    .nth(1)?
                    .split(')')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        for l in p
            .logs()
            .lines()
            .filter(|l| !l.contains("DEBUG") || clients.iter().any(|c| l.contains(c.as_str())))
        {
            println!("  cplb: {l}");
        }
    }

    assert!(p.is_running(), "cplb died:\n{}", p.logs());
    assert_eq!(p.count_logs("panicked"), 0, "{}", p.logs());
    assert_eq!(get(&c.corrupted), 0, "corrupted bytes");
    assert_eq!(get(&c.crc_mismatches), 0, "session checksums");
    assert_eq!(
        get(&c.counted_failed),
        0,
        "failed connects while a master was serving"
    );
    assert_eq!(get(&c.stalled), 0, "sessions stalled");
    assert_eq!(p.count_logs("reload refused"), 0, "{}", p.logs());
    assert!(
        get(&c.counted) > 100 && get(&c.bytes_checked) > 1_000_000,
        "the load ran"
    );
    assert!(kills > 0 && restarts > 0, "the chaos ran");
    assert!(
        within(after, base),
        "resources back to baseline: {after:?} vs {base:?}; open now:\n{}\nat baseline:\n{base_fds}",
        fd_list(pid)
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.logs());
}

/// What each descriptor is, with TCP sockets' ports and states, for the
/// failure message.
fn fd_list(pid: u32) -> String {
    let mut tcp = std::collections::HashMap::new();
    for f in ["tcp", "tcp6"] {
        let t = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for l in t.lines().skip(1) {
            let v: Vec<&str> = l.split_whitespace().collect();
            if v.len() > 9 {
                tcp.insert(
                    v[9].to_string(),
                    format!("{} -> {} st {}", v[1], v[2], v[3]),
                );
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let t = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let extra = t
                .strip_prefix("socket:[")
                .and_then(|i| tcp.get(i.trim_end_matches(']')))
                .cloned()
                .unwrap_or_default();
            out.push(format!("  {} {t} {extra}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out.join("\n")
}

/// The splice free lists keep up to 8 drained pipes (2 descriptors each)
/// per worker thread (src/splice.rs `KEEP`); the config runs 2 workers.
const PIPE_CAP: usize = 2 * 8 * 2;

/// Slack over the baseline: one descriptor for a socket in flux, pipes up
/// to the free lists' cap, threads of tokio's blocking pool that have not
/// yet timed out, and allocator arenas that keep some freed memory.
fn within(u: Usage, base: Usage) -> bool {
    u.fds <= base.fds + 1
        && u.pipes <= base.pipes.max(PIPE_CAP)
        && u.tasks <= base.tasks + 4
        && u.rss_kib <= base.rss_kib + 32 * 1024
}

/// Usage once two readings 300 ms apart agree on descriptors and threads.
async fn settle(pid: u32) -> Usage {
    let mut last = usage(pid);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let u = usage(pid);
        if (u.fds, u.pipes, u.tasks) == (last.fds, last.pipes, last.tasks) {
            return u;
        }
        last = u;
    }
    last
}

/// Waits (up to 30 s: idle blocking threads exit after 10 s) for usage to
/// come back within the slack of `base`; returns the last reading.
async fn settle_to(pid: u32, base: Usage) -> Usage {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let u = usage(pid);
        if within(u, base) || Instant::now() > end {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
