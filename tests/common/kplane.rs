//! Fixtures of the kernel data plane tests (tests/kernel_plane.rs): a
//! private bpffs, a cgroup v2 directory of the test's own, and client
//! processes that move themselves into it, so the programs rewrite only
//! the test's connects and nothing is left behind.
//!
//! A client is this test binary run again as its ignored `client_process`
//! test with `CPLB_KPLANE_CGROUP` set: it writes itself into the cgroup's
//! `cgroup.procs`, then answers one command per stdin line with one
//! stdout line marked `@@ ` (libtest writes its own text too).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, FakeUpstream, require};

pub const CLIENT_ENV: &str = "CPLB_KPLANE_CGROUP";

/// A bpffs mounted on a fresh temp directory; unmounted (dropping every
/// pin in it) when dropped.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    fn mount(tag: &str) -> Result<Bpffs, String> {
        let path = super::process::temp_dir(tag);
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t bpf: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Bpffs { path })
    }

    /// Every file and directory under it, relative, but the kernel's own
    /// `maps.debug` and `progs.debug` (preloaded on every bpffs).
    pub fn contents(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "debug") {
                    continue;
                }
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() {
                    walk(&p, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `{cgroup2 root}/cplb-test-<pid>-<n>`, removed when dropped (its client
/// processes are killed first).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    fn create(root: &Path) -> Result<Cgroup, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = root.join(format!("cplb-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        Ok(Cgroup { path })
    }

    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The id `bpf_get_current_cgroup_id()` reports inside it.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).unwrap().ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Clients exit when their stdin closes; a straggler is killed. The
        // directory can be removed once the last one is reaped.
        let end = Instant::now() + DEADLINE;
        loop {
            let procs = std::fs::read_to_string(self.procs()).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory effects; these are the
                // test's own client processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.path).is_ok() || Instant::now() > end {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Masters (and the stand-in proxy listener) on a runtime of their own,
/// outside the test cgroup.
pub struct Net {
    pub rt: tokio::runtime::Runtime,
}

impl Net {
    pub fn new() -> Net {
        Net {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    pub fn serve(&self, name: &str, at: &str) -> FakeUpstream {
        self.rt
            .block_on(FakeUpstream::start_at(name, at.parse().unwrap()))
    }

    pub fn stop(&self, u: FakeUpstream) -> SocketAddr {
        self.rt.block_on(u.stop())
    }
}

/// A private bpffs and a test cgroup, or `None` (skipped, or failed under
/// CPLB_TEST_REQUIRE_ALL) naming what is missing.
pub struct Env {
    pub cgroup: Cgroup,
    pub bpffs: Bpffs,
}

impl Env {
    pub fn new(test: &str) -> Option<Env> {
        if !require::root(test, "loads BPF programs and attaches them to a cgroup") {
            return None;
        }
        if !cplb::kernel::built_with_programs() {
            require::missing(
                test,
                "cplb was built without its kernel programs (needs clang and libbpf-dev: apt-get install clang libbpf-dev)",
            );
            return None;
        }
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    let dash = f.iter().position(|&x| x == "-")?;
                    (f.get(dash + 1) == Some(&"cgroup2")).then(|| PathBuf::from(f[4]))
                })
            });
        let Some(root) = root else {
            require::missing(
                test,
                "needs a cgroup v2 mount (none in /proc/self/mountinfo)",
            );
            return None;
        };
        let cgroup = match Cgroup::create(&root) {
            Ok(c) => c,
            Err(e) => {
                require::missing(test, &format!("cannot create a test cgroup: {e}"));
                return None;
            }
        };
        let bpffs = match Bpffs::mount(test) {
            Ok(b) => b,
            Err(e) => {
                require::missing(test, &format!("cannot mount a private bpffs: {e}"));
                return None;
            }
        };
        Some(Env { cgroup, bpffs })
    }

    pub fn settings(&self, listen: &[SocketAddr]) -> cplb::kernel::Settings {
        cplb::kernel::Settings {
            bpffs: self.bpffs.path.clone(),
            cgroup: Some(self.cgroup.path.clone()),
            listen: listen.to_vec(),
        }
    }

    /// A client process inside the test cgroup.
    pub fn client(&self) -> Client {
        Client::spawn(&self.cgroup.procs(), &[])
    }

    /// A client process run by `setpriv` with only `caps` (root's uid,
    /// its bounding set cut down), e.g. "+bpf,+net_admin".
    pub fn client_with_caps(&self, caps: &str) -> Client {
        let bounding = format!("--bounding-set=-all,{caps}");
        Client::spawn(
            &self.cgroup.procs(),
            &["setpriv", &bounding, "--inh-caps=-all"],
        )
    }
}

/// What a connect through a client process gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// Connection id, the greeting (who answered), getpeername, the
    /// client's own address.
    Ok {
        id: usize,
        greeting: String,
        peer: SocketAddr,
        local: SocketAddr,
    },
    Err(String),
}

impl Connect {
    pub fn greeting(&self) -> &str {
        match self {
            Connect::Ok { greeting, .. } => greeting,
            Connect::Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub fn is_err(&self) -> bool {
        matches!(self, Connect::Err(_))
    }
}

/// A client process in the test cgroup, driven over its stdin/stdout.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// Its thread's `comm`, as the connect program records it.
    pub comm: String,
}

impl Client {
    /// `wrap`: a command (and its arguments) to run the client under, e.g.
    /// `setpriv` with fewer capabilities.
    pub fn spawn(procs: &Path, wrap: &[&str]) -> Client {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args([
            "--exact",
            "client_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CLIENT_ENV, procs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn the client process");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Client {
            child,
            stdin,
            stdout,
            pid: 0,
            comm: String::new(),
        };
        let hello = c.reply();
        let mut parts = hello.split(' ');
        assert_eq!(parts.next(), Some("hello"), "{hello}");
        c.pid = parts.next().unwrap().parse().unwrap();
        c.comm = parts.next().unwrap_or("").to_string();
        c
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("client stdout");
            assert!(n > 0, "the client process exited");
            // libtest's "test client_process ... " may lead the first.
            if let Some(at) = line.find("@@ ") {
                return line[at + 3..].trim_end().to_string();
            }
        }
    }

    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("client stdin");
        self.stdin.flush().unwrap();
        self.reply()
    }

    pub fn connect(&mut self, addr: SocketAddr) -> Connect {
        let r = self.ask(&format!("connect {addr}"));
        let mut p = r.split(' ');
        match p.next() {
            Some("ok") => Connect::Ok {
                id: p.next().unwrap().parse().unwrap(),
                greeting: p.next().unwrap().to_string(),
                peer: p.next().unwrap().parse().unwrap(),
                local: p.next().unwrap().parse().unwrap(),
            },
            _ => Connect::Err(r),
        }
    }

    /// Echo on connection `id`: whether it is still alive.
    pub fn ping(&mut self, id: usize) -> bool {
        self.ask(&format!("ping {id}")) == "ok"
    }

    /// Echo on every open connection: (alive, dead) ids.
    pub fn ping_all(&mut self) -> (Vec<usize>, Vec<usize>) {
        let r = self.ask("pingall");
        let mut alive = Vec::new();
        let mut dead = Vec::new();
        for w in r.split(' ').skip(1) {
            if let Some(id) = w.strip_prefix('+') {
                alive.push(id.parse().unwrap());
            } else if let Some(id) = w.strip_prefix('-') {
                dead.push(id.parse().unwrap());
            }
        }
        (alive, dead)
    }

    pub fn close(&mut self, id: usize) {
        assert_eq!(self.ask(&format!("close {id}")), "ok");
    }

    /// Opens a Plane in the client process (its own capabilities) for
    /// `listen` and publishes one slot to `backend`: "ok", or the error.
    pub fn open_plane(&mut self, env: &Env, listen: SocketAddr, backend: SocketAddr) -> String {
        let r = self.ask(&format!(
            "open {} {} {listen}",
            env.bpffs.path.display(),
            env.cgroup.path.display()
        ));
        if r != "ok" {
            return r;
        }
        self.ask(&format!("publish {listen} {backend}"))
    }

    /// `n` connects to `addr` (greeting read, closed): the last greeting
    /// and the rate per second.
    pub fn rate(&mut self, addr: SocketAddr, n: u32) -> (String, f64) {
        let r = self.ask(&format!("rate {addr} {n}"));
        let mut p = r.split(' ');
        assert_eq!(p.next(), Some("ok"), "{r}");
        let last = p.next().unwrap().to_string();
        let secs: f64 = p.next().unwrap().parse().unwrap();
        (last, f64::from(n) / secs)
    }

    /// Moves the client into a network namespace of its own (loopback up)
    /// that runs a listener on 127.0.0.1:`port` announcing "netns".
    pub fn enter_netns(&mut self, port: u16) {
        let r = self.ask(&format!("netns {port}"));
        assert_eq!(r, "ok", "netns: {r}");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client process's side: runs when `CPLB_KPLANE_CGROUP` is set.
pub fn serve(procs: &str) {
    // Into the test cgroup before any connect.
    std::fs::write(procs, "0").expect("join the test cgroup");
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "@@ {s}");
        let _ = o.flush();
    };
    say(format!("hello {} {}", std::process::id(), comm.trim()));
    let mut conns: Vec<Option<BufReader<TcpStream>>> = Vec::new();
    let mut plane = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let mut words = line.split(' ');
        let reply = match (words.next(), words.next()) {
            (Some("open"), Some(bpffs)) => {
                let cgroup = words.next().unwrap();
                let listen = words.next().unwrap().parse().unwrap();
                match open(bpffs, cgroup, listen) {
                    Ok(p) => {
                        plane = Some(p);
                        "ok".into()
                    }
                    Err(e) => format!("err {}", cplb::logfmt::Chain(&e)),
                }
            }
            (Some("publish"), Some(listen)) => {
                let backend = words.next().unwrap().parse().unwrap();
                match plane
                    .as_mut()
                    .map(|p| publish(p, listen.parse().unwrap(), backend))
                {
                    Some(Ok(())) => "ok".into(),
                    Some(Err(e)) => format!("err {}", cplb::logfmt::Chain(&e)),
                    None => "err no plane".into(),
                }
            }
            (Some("destroy"), Some(backend)) => {
                let all = cplb::kernel::Filter::all();
                match plane
                    .as_ref()
                    .map(|p| p.destroy_to(backend.parse().unwrap(), all))
                {
                    Some(Ok(n)) => format!("ok {n}"),
                    Some(Err(e)) => format!("err {}", cplb::logfmt::Chain(&e)),
                    None => "err no plane".into(),
                }
            }
            (Some("connect"), Some(addr)) => connect(addr.parse().unwrap(), &mut conns),
            (Some("ping"), Some(id)) => match conns.get_mut(id.parse::<usize>().unwrap()) {
                Some(Some(c)) => if echo(c) { "ok" } else { "dead" }.into(),
                _ => "dead".into(),
            },
            (Some("pingall"), None) => {
                let mut r = String::from("ok");
                for (id, c) in conns.iter_mut().enumerate() {
                    if let Some(c) = c {
                        let sign = if echo(c) { '+' } else { '-' };
                        r.push_str(&format!(" {sign}{id}"));
                    }
                }
                r
            }
            (Some("close"), Some(id)) => {
                if let Some(c) = conns.get_mut(id.parse::<usize>().unwrap()) {
                    *c = None;
                }
                "ok".into()
            }
            (Some("netns"), Some(port)) => netns(port.parse().unwrap()),
            (Some("rate"), Some(addr)) => {
                let n: u32 = words.next().unwrap().parse().unwrap();
                rate(addr.parse().unwrap(), n)
            }
            (Some("exit"), None) => return,
            _ => format!("err unknown command '{line}'"),
        };
        say(reply);
    }
}

fn open(
    bpffs: &str,
    cgroup: &str,
    listen: SocketAddr,
) -> Result<cplb::kernel::Plane, cplb::kernel::KernelError> {
    cplb::kernel::Plane::open(&cplb::kernel::Settings {
        bpffs: bpffs.into(),
        cgroup: Some(cgroup.into()),
        listen: vec![listen],
    })
}

fn publish(
    plane: &mut cplb::kernel::Plane,
    listen: SocketAddr,
    backend: SocketAddr,
) -> Result<(), cplb::kernel::KernelError> {
    plane.publish(&cplb::kernel::Tables {
        backends: vec![cplb::kernel::Backend {
            addr: backend,
            max_fails: 1,
            fail_timeout_ms: 10_000,
            usable: true,
        }],
        services: vec![cplb::kernel::Service {
            listen,
            slots: vec![vec![0]],
        }],
    })
}

fn connect(addr: SocketAddr, conns: &mut Vec<Option<BufReader<TcpStream>>>) -> String {
    let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return format!("err {:?} {e}", e.kind()),
    };
    let peer = match s.peer_addr() {
        Ok(p) => p,
        Err(e) => return format!("err getpeername {e}"),
    };
    let local = s.local_addr().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    match r.read_line(&mut greeting) {
        Ok(n) if n > 0 => {}
        Ok(_) => return "err closed before a greeting".into(),
        Err(e) => return format!("err greeting {e}"),
    }
    conns.push(Some(r));
    format!(
        "ok {} {} {peer} {local}",
        conns.len() - 1,
        greeting.trim_end()
    )
}

/// `n` connects to `addr`, each reading its greeting and closing: "ok
/// <greeting of the last> <seconds>", or the first error.
fn rate(addr: SocketAddr, n: u32) -> String {
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..n {
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return format!("err {e}"),
        };
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(k) if k > 0 => last = String::from_utf8_lossy(&buf[..k]).trim().to_string(),
            other => return format!("err greeting {other:?}"),
        }
    }
    format!("ok {last} {}", start.elapsed().as_secs_f64())
}

fn echo(c: &mut BufReader<TcpStream>) -> bool {
    if c.get_mut().write_all(b"ping\n").is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(c.read_line(&mut line), Ok(n) if n > 0 && line == "ping\n")
}

/// This thread (the client's only one that connects) into a fresh network
/// namespace, with a listener of its own on 127.0.0.1:`port`.
fn netns(port: u16) -> String {
    // SAFETY: unshare changes only this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return format!("err unshare {}", std::io::Error::last_os_error());
    }
    match Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
    {
        Ok(s) if s.success() => {}
        other => return format!("err ip link set lo up: {other:?}"),
    }
    let l = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => return format!("err bind {e}"),
    };
    // Threads started now inherit this thread's namespace.
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.write_all(b"netns\n");
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    "ok".into()
}
