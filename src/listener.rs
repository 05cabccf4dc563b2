//! Listening sockets (SO_REUSEPORT, one per worker) and the accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::shared::{ClientSlot, Shared, Skipped};
use crate::wheel::Worker;

/// Which socket a [`ListenError`] is about, so an admin-port clash says
/// "admin".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Proxy,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Proxy => "",
            Role::Admin => "admin address ",
        })
    }
}

impl Role {
    /// The config setting the address comes from: what a failed start
    /// tells the operator to edit.
    pub fn field(self) -> &'static str {
        match self {
            Role::Proxy => "listen",
            Role::Admin => "admin",
        }
    }
}

// The OS error is the source, printed once by whoever prints the chain.
#[derive(Debug, thiserror::Error)]
#[error("could not listen on {role}{addr}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub role: Role,
    #[source]
    pub source: io::Error,
}

/// Binds `workers` SO_REUSEPORT sockets on `addr`. With port 0, the first
/// socket picks the port and the others join it.
pub(crate) fn bind(
    addr: SocketAddr,
    role: Role,
    workers: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, ListenError> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(workers);
    let mut target = addr;
    for _ in 0..workers {
        let l = bind_one(target, backlog).map_err(|source| ListenError {
            addr: target,
            role,
            source,
        })?;
        if target.port() == 0 {
            target = l
                .local_addr()
                .map_err(|source| ListenError { addr, role, source })?;
        }
        out.push(l);
    }
    Ok(out)
}

/// Why a bind failure may be skipped rather than be fatal: only `[::1]`,
/// only when the node has no usable IPv6 loopback (IPv6 disabled by
/// sysctl, or no IPv6 in the kernel). No IPv6 client can exist then, so
/// not listening there loses nothing; kubespray's own nginx-proxy adds
/// `[::1]` only when IPv6 is enabled. Anything else stays fatal.
pub(crate) fn skippable(e: &ListenError) -> Option<Skipped> {
    let SocketAddr::V6(a) = e.addr else {
        return None;
    };
    if e.role != Role::Proxy || !a.ip().is_loopback() {
        return None;
    }
    let reason = match e.source.raw_os_error() {
        Some(libc::EAFNOSUPPORT) => "the kernel has no IPv6",
        Some(libc::EADDRNOTAVAIL) if sysctl_is_one("all") => {
            "IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6 = 1)"
        }
        Some(libc::EADDRNOTAVAIL) if sysctl_is_one("lo") => {
            "IPv6 is disabled on the loopback interface (net.ipv6.conf.lo.disable_ipv6 = 1)"
        }
        Some(libc::EADDRNOTAVAIL) if !std::path::Path::new("/proc/sys/net/ipv6").exists() => {
            "the kernel has no IPv6"
        }
        _ => return None,
    };
    Some(Skipped {
        addr: e.addr,
        reason,
    })
}

/// `net.ipv6.conf.<iface>.disable_ipv6` of this thread's network namespace.
fn sysctl_is_one(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"))
        .is_ok_and(|v| v.trim() == "1")
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // "[::]:8443" next to "0.0.0.0:8443" must not collide.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Inherited by every accepted client socket (see `copy::sockopt`).
    crate::copy::tune_listener(&socket);
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Accept errors that concern one connection, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until `stop`, then takes in what is already queued (so closing
/// the socket resets as few clients as possible) and returns.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
    worker: Worker,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                end_accept_episode(&shared);
                backoff = BACKOFF_MIN;
                dispatch(&shared, &tracker, stream, peer, worker);
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the queued client stays
                // queued; wait for resources instead of spinning or exiting.
                shared.metrics.rejected.accept_error.inc();
                shared
                    .accept_failed_at
                    .store(shared.clock.now_ms(), Ordering::Release);
                if !shared.accept_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "accept failed; backing off until it recovers");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Drain the accept queue without waiting for more.
    let mut drained = 0usize;
    while let Some(Ok((stream, peer))) = std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
    {
        drained += 1;
        dispatch(&shared, &tracker, stream, peer, worker);
    }
    if drained > 0 {
        tracing::debug!(
            drained,
            "took queued connections before closing the listener"
        );
    }
}

/// How long accepts must succeed before a failure episode counts as over;
/// under descriptor pressure accepts flap, and each flap is not news.
const EPISODE_QUIET_MS: u64 = 1000;

/// Ends an accept-failure episode (shared by all listeners) once it has
/// been quiet for a while: one "backing off" line and one "again" line.
fn end_accept_episode(shared: &Shared) {
    if shared.accept_failing.load(Ordering::Relaxed)
        && shared
            .clock
            .now_ms()
            .saturating_sub(shared.accept_failed_at.load(Ordering::Acquire))
            >= EPISODE_QUIET_MS
        && shared.accept_failing.swap(false, Ordering::AcqRel)
    {
        tracing::info!("accepting connections again");
    }
}

/// Counts the client against `max_connections` and spawns its task.
fn dispatch(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    stream: TcpStream,
    peer: SocketAddr,
    worker: Worker,
) {
    // The one snapshot this connection uses, from limit check to upstream choice.
    let snapshot = shared.snapshot.load_full();
    let max = snapshot.settings.max_connections;
    if shared.clients.fetch_add(1, Ordering::AcqRel) >= max {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        shared.metrics.rejected.max_connections.inc();
        tracing::debug!(%peer, max, "max_connections reached; closing new client");
        return;
    }
    // `handle` itself is the task: a wrapper would hold its arguments twice.
    tracker.spawn(crate::proxy::handle(
        ClientSlot::new(shared.clone()),
        snapshot,
        stream,
        peer,
        worker,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds one of these tasks for its whole life,
    /// so its size is most of the memory an idle proxied connection costs.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let shared = Arc::new(Shared::for_config("upstreams:\n  - address: 127.0.0.1:1\n"));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let timers = shared.timers.clone();
        let size =
            crate::wheel::with_worker(&timers, Duration::from_secs(1), |worker| async move {
                let task = crate::proxy::handle(
                    ClientSlot::new(shared.clone()),
                    shared.snapshot.load_full(),
                    stream,
                    peer,
                    worker,
                );
                if let crate::proxy::Connection::Setup { setup } = &task {
                    println!("set-up future: {} bytes", std::mem::size_of_val(&**setup));
                }
                // As spawned: the tracker wraps it.
                std::mem::size_of_val(&TaskTracker::new().track_future(task))
            })
            .await;
        // tokio's task cell: a 32-byte header, scheduler and id, the future,
        // a 48-byte trailer, in a 128-byte aligned allocation. At 280 bytes
        // the cell is 384 even if the future's stage takes a tag word; the
        // next size up is 512 (measured: 126 bytes more per idle
        // connection in tests/conn_memory.rs).
        let cell = (32 + 16 + size + 48).div_ceil(128) * 128;
        println!("connection task: {size} bytes, in a task cell of about {cell} bytes");
        assert!(size <= 280, "the connection task grew to {size} bytes");
    }
}
