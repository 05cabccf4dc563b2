//! Start-up and shutdown of one proxy: bind, resolve, publish the first
//! snapshot, run the accept loops, the reloader, the config watcher and
//! the admin endpoint; drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::listener::{self, ListenError, Role};
use crate::logfmt::Json;
use crate::metrics::Metrics;
use crate::reload::{ReloadHandle, Reloader};
use crate::resolve;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::supervise::{Supervisor, Task};
use crate::upstream::StateTable;
use crate::workers::Workers;

/// Why a proxy could not start: `bind` (listeners, TLS for the probes,
/// metrics) or `serve` (the worker threads, the admin listener).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] crate::probe::TlsError),
    // Context only: the cause is the source, printed once by the chain.
    #[error("could not start the worker threads")]
    Workers(#[source] std::io::Error),
    #[error("could not register metrics")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Upstreams(#[from] crate::ring::TooManyServers),
    /// `dataplane.mode: kernel` and the programs cannot be loaded and
    /// attached; the message names every missing piece.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// EADDRINUSE, with whoever holds the address (`reuseport::holders`).
    #[error("could not listen on {role}{addr}: {holders}")]
    Taken {
        addr: SocketAddr,
        role: Role,
        holders: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, proxy. `bind` then `serve`; tests and `main`
/// read the bound addresses and take a reload handle in between.
pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    reloader: Reloader,
    reload: ReloadHandle,
    listeners: Vec<std::net::TcpListener>,
    local_addrs: Vec<SocketAddr>,
    admin: Option<std::net::TcpListener>,
    admin_addr: Option<SocketAddr>,
    supervisor: Supervisor,
    admin_metrics: crate::admin::AdminMetrics,
    /// Kernel mode: the attached programs and their maps.
    plane: Option<crate::kernel::Plane>,
}

impl Server {
    pub async fn bind(
        config: Config,
        registry: prometheus::Registry,
    ) -> Result<Server, ServerError> {
        match Self::bind_inner(config, registry).await {
            Err(ServerError::Listen(e)) => Err(name_holders(e).await),
            r => r,
        }
    }

    async fn bind_inner(
        config: Config,
        registry: prometheus::Registry,
    ) -> Result<Server, ServerError> {
        let metrics = Metrics::new(registry)?;
        let supervisor = Supervisor::new(metrics.registry())?;
        let admin_metrics = crate::admin::AdminMetrics::new(metrics.registry())?;
        let checks = crate::probe::prepare(&config)?;
        let (listeners, local_addrs, skipped, shared_with) = bind_listen(&config, &metrics)?;
        report_other_listeners(shared_with).await;
        // After the listeners: whatever the mode, they stay, and a connect
        // the kernel leaves alone reaches them.
        let dataplane = crate::dataplane::start(&config)?;
        metrics.set_dataplane(dataplane.in_force.kernel);
        let (admin, admin_addr) = match config.admin {
            None => (None, None),
            Some(addr) => {
                let l = listener::bind(addr, Role::Admin, 1, crate::admin::BACKLOG)?.remove(0);
                let local = local_addr(&l, addr, Role::Admin)?;
                (Some(l), Some(local))
            }
        };
        let wiring = crate::discovery::run::Wiring::new(
            &config,
            crate::discovery::metrics::DiscoveryMetrics::new(metrics.registry())?,
        )
        .await;
        let own = crate::own::OwnSockets::new(local_addrs.clone());
        let mut table = StateTable::new(crate::wheel::Timers::new(config.workers.get()), own);
        let built = Snapshot::build_with(&config, &wiring.entries(&config), &mut table, &metrics)?;
        wiring.count(&built.snapshot);
        resolve::resolve_upstreams(&built.snapshot, &built.added, false).await;
        metrics.last_reload_success_timestamp.set(Clock::unix_now());
        let shared = Shared::new(
            built.snapshot,
            table.timers(),
            metrics,
            skipped,
            config.source.clone(),
        );
        let _ = shared.dataplane.in_force.set(dataplane.in_force);
        let shared = Arc::new(shared);
        let (reloader, reload) =
            Reloader::new(shared.clone(), config.clone(), table, checks, wiring);
        Ok(Server {
            config,
            shared,
            reloader,
            reload,
            listeners,
            local_addrs,
            admin,
            admin_addr,
            supervisor,
            admin_metrics,
            plane: dataplane.plane,
        })
    }

    /// One address per `listen` entry (the port chosen, when it was 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Triggers reloads of the config file (SIGHUP in `main`; tests).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Reloads on every SIGHUP, through the same path as a file change, in
    /// a supervised task. Fails only if the handler cannot be installed.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        // The first stream now, so a failure stops start-up; a restarted
        // task installs its own.
        let mut first = Some(signal(SignalKind::hangup())?);
        let handle = self.reload.clone();
        self.supervisor
            .restarting(Task::Sighup, CancellationToken::new(), move || {
                crate::reload::on_sighup(first.take(), handle.clone())
            });
        Ok(())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open
    /// connections finish for up to `shutdown_grace`, and closes the rest.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            config,
            shared,
            reloader,
            reload,
            listeners,
            local_addrs,
            admin,
            admin_addr,
            supervisor,
            admin_metrics,
            plane,
        } = self;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = ?Json(&local_addrs),
            admin = %admin_addr.map_or("disabled".to_string(), |a| a.to_string()),
            workers = config.workers.get(),
            hash_key = config.hash.key.as_str(),
            dataplane = if plane.is_some() { "kernel" } else { "proxy" },
            node_id = %config.hash.node_id,
            upstreams = ?Json(config.upstreams.iter().map(|u| u.address.as_str()).collect::<Vec<_>>()),
            "cplb started"
        );
        let stop_accept = CancellationToken::new();
        let stop_rest = CancellationToken::new();
        let conns = TaskTracker::new();
        let n = config.workers.get();
        let workers = Workers::start(n).map_err(ServerError::Workers)?;
        // Listener i of every address goes to worker i.
        let mut mine: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        for (i, l) in listeners.into_iter().enumerate() {
            mine[i % n].push(l);
        }
        let accepts = TaskTracker::new();
        let mut started = Vec::with_capacity(n);
        for (i, listeners) in mine.into_iter().enumerate() {
            let (up, on_start) = tokio::sync::oneshot::channel::<()>();
            started.push(on_start);
            let settings_of = shared.clone();
            let (shared, conns, stop) = (shared.clone(), conns.clone(), stop_accept.clone());
            let accepts = accepts.clone();
            // Each worker's wheels turn until the last connection is gone
            // (the drain keeps idle timeouts); its accept loops start from
            // inside, so every connection they accept waits on wheels that
            // turn.
            workers.spawn(
                i,
                shared.timers.clone().run(
                    i,
                    move || {
                        let snap = settings_of.snapshot.load();
                        crate::wheel::tick(snap.settings.idle_timeout, snap.timer_floor())
                    },
                    stop_rest.clone(),
                    move |worker| {
                        for l in listeners {
                            let (shared, conns, stop) = (shared.clone(), conns.clone(), stop.clone());
                            accepts.spawn(async move {
                                // Registered with the worker's own reactor.
                                let addr = l.local_addr().ok();
                                match TcpListener::from_std(l) {
                                    Ok(l) => listener::accept_loop(l, shared, conns, stop, worker).await,
                                    Err(e) => tracing::error!(addr = ?Json(addr), error = %e, "could not register listener"),
                                }
                            });
                        }
                        let _ = up.send(());
                    },
                ),
            );
        }
        // Every accept loop is tracked before the tracker is closed, so the
        // drain waits for all of them.
        for s in started {
            let _ = s.await;
        }
        accepts.close();
        // Every control-plane task is supervised (`supervise`): a panic is
        // logged and counted; the reloader's fails /healthz (its state
        // cannot be rebuilt in place), the others restart.
        if let (Some(l), Some(addr)) = (admin, admin_addr) {
            let l = Arc::new(TcpListener::from_std(l).map_err(|source| ListenError {
                addr,
                role: Role::Admin,
                source,
            })?);
            let (shared, sup, stop) = (shared.clone(), supervisor.clone(), stop_rest.clone());
            supervisor.restarting(Task::Admin, stop_rest.clone(), move || {
                crate::admin::serve(
                    l.clone(),
                    shared.clone(),
                    sup.clone(),
                    admin_metrics.clone(),
                    stop.clone(),
                )
            });
        }
        if let Some(path) = config.source.clone() {
            let (reload, stop) = (reload.clone(), stop_rest.clone());
            supervisor.restarting(Task::Watch, stop_rest.clone(), move || {
                crate::watch::run(path.clone(), reload.clone(), stop.clone())
            });
        }
        supervisor.vital(Task::Reloader, reloader.run(stop_rest.clone()));
        // Fail-back stops with the listeners: a drain closes by itself.
        let (failback_shared, stop) = (shared.clone(), stop_accept.clone());
        supervisor.restarting(Task::Failback, stop_accept.clone(), move || {
            crate::failback::driver::run(failback_shared.clone(), stop.clone())
        });
        if let Some(plane) = plane {
            // Runs through the drain: the maps keep following health until
            // the end, and stay as last written once cplb has stopped.
            let kept = crate::dataplane::sync::Kept::new(plane);
            let (shared, listen, stop) = (shared.clone(), local_addrs.clone(), stop_rest.clone());
            supervisor.restarting(Task::Dataplane, stop_rest.clone(), move || {
                crate::dataplane::sync::run(
                    shared.clone(),
                    kept.clone(),
                    listen.clone(),
                    stop.clone(),
                )
            });
        }
        shutdown.await;

        // /readyz turns 503 before the listeners close.
        shared.draining.store(true, Ordering::SeqCst);
        stop_accept.cancel();
        accepts.wait().await;
        conns.close();
        let open = shared.clients.load(Ordering::Acquire);
        // The latest reloaded value, not the start-up one.
        let grace = shared.snapshot.load().settings.shutdown_grace;
        tracing::info!(
            open,
            grace_seconds = grace.as_secs_f64(),
            "stopped accepting; draining connections"
        );
        if tokio::time::timeout(grace, conns.wait()).await.is_err() {
            let left = shared.clients.load(Ordering::Acquire);
            tracing::info!(left, "drain grace over; closing remaining connections");
            shared.close_all();
            conns.wait().await;
        }
        stop_rest.cancel();
        drop(workers);
        tracing::info!("cplb stopped");
        Ok(())
    }
}

type Bound = (
    Vec<std::net::TcpListener>,
    Vec<SocketAddr>,
    Vec<crate::shared::Skipped>,
    // Each fixed-port address and the inodes of our sockets on it.
    Vec<(SocketAddr, std::collections::BTreeSet<u64>)>,
);

/// An address already in use: says who holds it, as far as `/proc` shows
/// (a squatter on cplb's port, another proxy), within `REPORT_LIMIT`.
async fn name_holders(e: ListenError) -> ServerError {
    if e.source.raw_os_error() != Some(libc::EADDRINUSE) {
        return e.into();
    }
    let addr = e.addr;
    let holders = match crate::offload::Offload::new(REPORT_LIMIT)
        .run(move || crate::reuseport::holders(addr).to_string())
        .await
    {
        Ok(h) => h,
        Err(stalled) => format!("could not look for its holder in /proc: {stalled}"),
    };
    ServerError::Taken {
        addr,
        role: e.role,
        holders,
        source: e.source,
    }
}

/// How long start-up waits for the `/proc` walk that names another
/// listener on a `listen` address before it serves anyway.
const REPORT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Logs another process listening on each address (`reuseport::report`),
/// before "cplb started" as a rule; a `/proc` that hangs delays start-up
/// by `REPORT_LIMIT` at most, and the line comes when the walk returns.
async fn report_other_listeners(addrs: Vec<(SocketAddr, std::collections::BTreeSet<u64>)>) {
    let mut walk = crate::offload::Offload::new(REPORT_LIMIT);
    for (addr, ours) in addrs {
        if let Err(e) = walk
            .run(move || crate::reuseport::report(addr, &ours))
            .await
        {
            tracing::warn!(address = %addr, error = %e, "could not look for other listeners on this address");
        }
    }
}

/// Binds every `listen` address. A loopback IPv6 address on a node without
/// IPv6 is skipped (one warning, `/readyz` detail, `cplb_listen_skipped`);
/// every other failure is fatal, and so is skipping all of them.
fn bind_listen(config: &Config, metrics: &Metrics) -> Result<Bound, ServerError> {
    let (mut listeners, mut local_addrs, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut shared_with = Vec::new();
    let mut first_skip_error = None;
    for addr in &config.listen {
        metrics.listen_skipped(&addr.to_string()).set(0);
        match listener::bind(
            *addr,
            Role::Proxy,
            config.workers.get(),
            config.backlog.get(),
        ) {
            Ok(socks) => {
                local_addrs.push(local_addr(&socks[0], *addr, Role::Proxy)?);
                if addr.port() != 0 {
                    shared_with.push((*addr, crate::reuseport::inodes(&socks)));
                }
                listeners.extend(socks);
            }
            Err(e) => match listener::skippable(&e) {
                Some(s) => {
                    skipped.push(s);
                    first_skip_error.get_or_insert(e);
                }
                None => return Err(e.into()),
            },
        }
    }
    if listeners.is_empty()
        && let Some(e) = first_skip_error
    {
        return Err(e.into());
    }
    for s in &skipped {
        metrics.listen_skipped(&s.addr.to_string()).set(1);
        tracing::warn!(
            address = %s.addr,
            reason = s.reason,
            "not listening on this loopback IPv6 address: the node has no IPv6, so no IPv6 client can exist here"
        );
    }
    Ok((listeners, local_addrs, skipped, shared_with))
}

fn local_addr(
    l: &std::net::TcpListener,
    addr: SocketAddr,
    role: Role,
) -> Result<SocketAddr, ListenError> {
    l.local_addr()
        .map_err(|source| ListenError { addr, role, source })
}

/// Runs a proxy with its own metrics registry until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(config, prometheus::Registry::new())
        .await?
        .serve(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::TlsError;
    use std::error::Error;

    /// What `main` prints (anyhow's `{:#}`): every message of the chain,
    /// joined by ": ". Fails when a message embeds its own source's.
    fn chain(e: &dyn Error) -> String {
        let mut parts = vec![e.to_string()];
        let mut cur = e;
        while let Some(s) = cur.source() {
            let (outer, inner) = (cur.to_string(), s.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
            parts.push(inner);
            cur = s;
        }
        parts.join(": ")
    }

    #[test]
    fn error_chains_carry_each_cause_once() {
        let os = || std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let listen = |role| ListenError {
            addr,
            role,
            source: os(),
        };
        let cases: Vec<Box<dyn Error>> = vec![
            Box::new(ServerError::from(listen(Role::Proxy))),
            Box::new(ServerError::from(listen(Role::Admin))),
            Box::new(ServerError::Workers(os())),
            Box::new(ServerError::Taken {
                addr,
                role: Role::Admin,
                holders: "it is held by python3 (pid 7, uid 1000) on 127.0.0.1:8081".into(),
                source: os(),
            }),
            Box::new(ServerError::Metrics(prometheus::Error::AlreadyReg)),
            Box::new(ServerError::Tls(TlsError::Read {
                path: "ca.pem".into(),
                error: os(),
            })),
            #[cfg(feature = "tools")]
            Box::new(crate::demo::DemoError::Server(listen(Role::Proxy).into())),
            #[cfg(feature = "tools")]
            Box::new(crate::demo::DemoError::Io(os())),
            #[cfg(feature = "tools")]
            Box::new(crate::standin::StandinError::Listen { addr, source: os() }),
            #[cfg(feature = "tools")]
            Box::new(crate::standin::client::ClientError::Io(os())),
            Box::new(crate::config::ConfigError::Read {
                path: "/etc/cplb/cplb.yaml".into(),
                source: os(),
            }),
            Box::new(crate::reload::ReloadError::Config(
                crate::config::ConfigError::Read {
                    path: "/etc/cplb/cplb.yaml".into(),
                    source: os(),
                },
            )),
            #[cfg(feature = "tools")]
            Box::new(crate::demo::DemoError::Config(
                crate::config::ConfigError::Read {
                    path: "/etc/cplb/cplb.yaml".into(),
                    source: os(),
                },
            )),
        ];
        for e in cases {
            let all = chain(&*e);
            assert!(all.matches("os error 98").count() <= 1, "{all}");
        }
        let read = crate::config::ConfigError::Read {
            path: "/etc/cplb/cplb.yaml".into(),
            source: os(),
        };
        assert_eq!(
            chain(&read),
            "could not read /etc/cplb/cplb.yaml: Address already in use (os error 98)"
        );
        // What logs and `/status` print without anyhow: the same chain.
        assert_eq!(crate::logfmt::Chain(&read).to_string(), chain(&read));
        let all = chain(&ServerError::from(listen(Role::Admin)));
        assert_eq!(
            all,
            "could not listen on admin address 127.0.0.1:8081: Address already in use (os error 98)"
        );
    }

    /// Supervision of the real tasks: faults armed in each start of
    /// `serve`, on this thread (the control plane's current-thread runtime).
    mod supervision {
        use super::*;
        use crate::logfmt::tests::Logs;
        use crate::supervise::fault;
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const DEADLINE: Duration = Duration::from_secs(10);

        async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut raw = String::new();
            tokio::time::timeout(DEADLINE, s.read_to_string(&mut raw))
                .await
                .ok()?
                .ok()?;
            let status = raw.split(' ').nth(1)?.parse().ok()?;
            Some((status, raw.split_once("\r\n\r\n")?.1.to_string()))
        }

        async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
            let end = tokio::time::Instant::now() + DEADLINE;
            while !cond().await {
                assert!(tokio::time::Instant::now() < end, "timed out: {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        fn yaml(idle: &str) -> String {
            format!(
                "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nidle_timeout: {idle}\nupstreams:\n  - address: 127.0.0.1:1\n"
            )
        }

        /// Starts a server from a config file, with faults armed first.
        async fn start(tag: &str, faults: &[Task]) -> (Server, std::path::PathBuf) {
            let dir = std::env::temp_dir().join(format!("cplb-sup-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("cplb.yaml");
            std::fs::write(&path, yaml("10m")).unwrap();
            for t in faults {
                fault::arm(*t);
            }
            let config = Config::load(&path).unwrap();
            (
                Server::bind(config, prometheus::Registry::new())
                    .await
                    .unwrap(),
                path,
            )
        }

        fn panics(m: &Metrics, task: Task) -> f64 {
            let text = m.render().unwrap();
            let series = format!("cplb_task_panics_total{{task=\"{}\"}} ", task.name());
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .parse()
                .unwrap()
        }

        /// Admin, watch, fail-back and SIGHUP each panic at their first
        /// start: each is logged and counted, and runs again (the admin
        /// answers, a file edit and a SIGHUP reload); /healthz stays 200.
        #[tokio::test]
        async fn tasks_that_panic_are_logged_counted_and_restarted() {
            let (_g, logs) = Logs::capture();
            let restarted = [Task::Admin, Task::Watch, Task::Failback, Task::Sighup];
            let faults = restarted.to_vec();
            let (server, path) = start("restart", &faults).await;
            server.reload_on_sighup().unwrap();
            let (admin, m) = (server.admin_addr().unwrap(), server.metrics().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server.serve(async {
                let _ = stopped.await;
            }));
            until("the restarted admin answers", async || {
                get(admin, "/healthz").await == Some((200, "ok\n".into()))
            })
            .await;
            // The restarted watcher sees an edit; the restarted SIGHUP task
            // a signal (tokio's handler is installed: the process lives).
            let reloads = |m: &Metrics| m.reload("success").get();
            std::fs::write(&path, yaml("20m")).unwrap();
            until("the edit reloaded", async || reloads(&m) == 1).await;
            // SAFETY: raise has no preconditions; SIGHUP is handled.
            unsafe { libc::raise(libc::SIGHUP) };
            until("SIGHUP reloaded", async || reloads(&m) == 2).await;
            for t in &faults {
                assert_eq!(panics(&m, *t), 1.0, "{}", t.name());
            }
            assert_eq!(panics(&m, Task::Reloader), 0.0);
            for t in restarted {
                let lines = logs.lines(&format!("task=\"{}\"", t.name()));
                println!("{}", lines.join("\n"));
                assert!(
                    lines.len() == 1
                        && lines[0].contains("ERROR")
                        && lines[0].contains("restarting it")
                        && lines[0]
                            .contains(&format!("panic=injected fault in the {} task", t.name())),
                    "{lines:?}"
                );
            }
            assert_eq!(get(admin, "/healthz").await, Some((200, "ok\n".into())));
            let _ = stop.send(());
            serving.await.unwrap().unwrap();
        }

        /// The reloader's panic cannot be undone in place: /healthz turns
        /// 503 naming it, so the liveness probe restarts cplb.
        #[tokio::test]
        async fn a_reloader_panic_fails_healthz() {
            let (_g, logs) = Logs::capture();
            let (server, _) = start("vital", &[Task::Reloader]).await;
            let (admin, m) = (server.admin_addr().unwrap(), server.metrics().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server.serve(async {
                let _ = stopped.await;
            }));
            let mut answer = None;
            until("/healthz fails", async || {
                answer = get(admin, "/healthz").await;
                answer.as_ref().is_some_and(|(st, _)| *st == 503)
            })
            .await;
            assert_eq!(panics(&m, Task::Reloader), 1.0);
            let body = answer.unwrap().1;
            println!("/healthz: {body}");
            assert!(
                body.contains("the reloader task panicked (injected fault in the reloader task)")
                    && body.contains("config reloads")
                    && body.contains("restart cplb"),
                "{body}"
            );
            let lines = logs.lines("/healthz now fails");
            println!("{}", lines.join("\n"));
            assert!(
                lines.len() == 1 && lines[0].contains("task=\"reloader\""),
                "{lines:?}"
            );
            let _ = stop.send(());
            serving.await.unwrap().unwrap();
        }
    }
}
