//! Shared test fixtures: fake upstreams that announce who they are, a proxy
//! started in-process, clients, metric scraping, and polling with a deadline.
#![allow(dead_code)]

pub mod cluster;
pub mod engine;
pub mod kplane;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod promql;
pub mod require;
pub mod shipped;
pub mod testconfig;

#[allow(unused_imports)] // Not every test file builds configs.
pub use testconfig::{HealthCheck, TestConfig};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cplb::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// What a fake upstream does after announcing its name.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Echo every byte back.
    Echo,
    /// Read to EOF, reply "<count> <crc32>\n", then send `reply` bytes of a
    /// known pattern and close: checks half-close in both directions.
    Drain { reply: usize },
    /// Send "tick\n" every `ms` milliseconds, ignore input: a watch.
    Ticker { ms: u64 },
}

/// A TCP server on 127.0.0.1:0 that writes `name\n` on accept.
pub struct FakeUpstream {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(name: &str) -> FakeUpstream {
        Self::start_mode(name, Mode::Echo).await
    }

    pub async fn start_mode(name: &str, mode: Mode) -> FakeUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, l, mode)
    }

    /// Starts on a given address (to bring a "dead" upstream back).
    pub async fn start_at(name: &str, addr: SocketAddr) -> FakeUpstream {
        let l = TcpListener::bind(addr).await.unwrap();
        Self::serve(name, l, Mode::Echo)
    }

    fn serve(name: &str, l: TcpListener, mode: Mode) -> FakeUpstream {
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (n, a) = (name.to_string(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let line = format!("{n}\n");
                tokio::spawn(async move {
                    if s.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    match mode {
                        Mode::Echo => {
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                        Mode::Drain { reply } => {
                            let mut h = crc32fast::Hasher::new();
                            let mut count = 0usize;
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match s.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(k) => {
                                        h.update(&buf[..k]);
                                        count += k;
                                    }
                                }
                            }
                            let head = format!("{count} {}\n", h.finalize());
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(&pattern(reply)).await;
                            let _ = s.shutdown().await;
                        }
                        Mode::Ticker { ms } => loop {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            if s.write_all(b"tick\n").await.is_err() {
                                return;
                            }
                        },
                    }
                });
            }
        });
        FakeUpstream {
            name: name.to_string(),
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the listening socket (new connects are
    /// refused from the moment this returns).
    pub async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// An address where nothing listens: connects are refused.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A port free on 127.0.0.1 now, for a process that binds it right after.
pub fn free_port() -> u16 {
    refused_addr().port()
}

/// A listener that never accepts, with its accept queue already full, so
/// further SYNs are dropped and connects time out: a blackholed master.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        Self::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// A blackhole on a given address (a master that stops answering).
    pub fn start_at(at: SocketAddr) -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        // The address was a master's a moment ago: its closed connections
        // may sit in TIME_WAIT.
        s.set_reuse_address(true).unwrap();
        s.bind(&at.into()).unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue: with backlog 0 Linux still queues one connection;
        // connect until one times out.
        let mut fillers = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(c) => fillers.push(c),
                Err(_) => break,
            }
            assert!(fillers.len() < 64, "blackhole queue never filled");
        }
        Blackhole {
            addr,
            _listener: s,
            _fillers: fillers,
        }
    }
}

/// Parses a config from YAML text (as if from `test.yaml`).
pub fn config(yaml: &str) -> Config {
    Config::parse(yaml, std::path::Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub reload: cplb::reload::ReloadHandle,
    pub metrics: cplb::metrics::Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<Serving>,
}

/// Where a `Proxy` serves: a task of the test's runtime, or a runtime of
/// its own thread.
enum Serving {
    Task(JoinHandle<Result<(), cplb::ServerError>>),
    Thread(oneshot::Receiver<Result<(), cplb::ServerError>>),
}

/// What a test keeps of a bound server before it serves.
struct Bound {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    reload: cplb::reload::ReloadHandle,
    metrics: cplb::metrics::Metrics,
}

impl Bound {
    fn of(server: &cplb::Server) -> Bound {
        Bound {
            addrs: server.local_addrs().to_vec(),
            admin: server.admin_addr(),
            reload: server.reload_handle(),
            metrics: server.metrics().clone(),
        }
    }

    fn proxy(self, stop: oneshot::Sender<()>, task: Serving) -> Proxy {
        Proxy {
            addr: self.addrs[0],
            addrs: self.addrs,
            admin: self.admin,
            reload: self.reload,
            metrics: self.metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

async fn bind(config: Config) -> cplb::Server {
    init_logs();
    cplb::Server::bind(config, prometheus::Registry::new())
        .await
        .unwrap()
}

impl Proxy {
    pub async fn start(config: Config) -> Proxy {
        let server = bind(config).await;
        let bound = Bound::of(&server);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        bound.proxy(tx, Serving::Task(task))
    }

    /// As `start`, with the control plane on a current-thread runtime of
    /// its own thread, as the binary runs it: whatever blocks that thread
    /// blocks neither the test's runtime nor its deadlines.
    pub async fn start_on_own_thread(config: Config) -> Proxy {
        let (up_tx, up_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async move {
                let server = bind(config).await;
                let _ = up_tx.send(Bound::of(&server));
                server
                    .serve(async {
                        let _ = stop_rx.await;
                    })
                    .await
            });
            let _ = done_tx.send(r);
        });
        let bound = up_rx.await.expect("the proxy's thread started");
        bound.proxy(stop_tx, Serving::Thread(done_rx))
    }

    pub fn scrape(&self) -> metrics::Scrape {
        metrics::Scrape::parse(&self.metrics.render().unwrap())
    }

    /// Begins shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(Serving::Task(t)) => t.await.unwrap().unwrap(),
            Some(Serving::Thread(t)) => t.await.unwrap().unwrap(),
            None => {}
        }
    }
}

/// A client connection through the proxy, after reading the upstream's name.
pub struct Client {
    pub upstream: String,
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(proxy: SocketAddr) -> Client {
        Self::connect_from(None, proxy)
            .await
            .expect("no upstream answered")
    }

    /// Connects from a chosen source IP (any 127.x.y.z works on loopback).
    /// None if the proxy closed the connection without an upstream.
    pub async fn connect_from(src: Option<std::net::IpAddr>, proxy: SocketAddr) -> Option<Client> {
        let sock = TcpSocket::new_v4().unwrap();
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let s = sock.connect(proxy).await.unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .expect("no greeting within deadline")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(Client {
            upstream: line.trim_end().to_string(),
            reader,
        })
    }

    /// Sends a line and expects it echoed back.
    pub async fn ping(&mut self, msg: &str) {
        self.reader
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line))
            .await
            .expect("echo within deadline")
            .unwrap();
        assert_eq!(line.trim_end(), msg);
    }
}

/// Logs of in-process proxies go to the test's captured output (shown on
/// failure); RUST_LOG picks the level.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// GET `path` on a thread of its own (`promql::get`, blocking sockets):
/// for tests whose runtime may be busy for seconds (stand-in masters
/// serialising a huge list), where a request written late would be cplb's
/// admin endpoint rightly closing a client that sent no head within 2 s.
/// (status, body).
pub async fn get_off_runtime(addr: SocketAddr, path: &str) -> (u16, String) {
    let p = path.to_string();
    tokio::task::spawn_blocking(move || promql::get(addr, &p))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// A minimal HTTP/1.1 exchange: (status, headers, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("admin answered")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete HTTP response from {addr} to {method} {path}: {raw:?}")
    });
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The `/upstreams` entry of `address`, from the admin endpoint at `admin`.
pub async fn upstream_entry(admin: SocketAddr, address: &str) -> serde_json::Value {
    let (_, _, body) = http(admin, "GET", "/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in /upstreams: {v:#}"))
        .clone()
}

/// The deadline passed before `eventually`'s probe answered.
#[derive(Debug)]
pub struct TimedOut(pub Duration);

/// Polls the async `probe` every 20 ms until it answers `Some(value)`, and
/// returns that value; `Err(TimedOut)` once `deadline` has passed, so the
/// caller's panic can add its own context (logs, the last answer).
pub async fn eventually<T>(
    deadline: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            return Err(TimedOut(deadline));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    eventually(DEADLINE, async || cond().then_some(()))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}
