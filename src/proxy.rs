//! One client connection: pick upstreams in ring order, connect with
//! failover, then copy both ways (`copy::Copy`) until either side ends, the
//! upstream is evicted or removed, fail-back sends a displaced connection
//! home, or shutdown forces the close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use crate::copy::{self, CopyEnd, Ends};
use crate::failback::{self, Placement, registry::DisplacedGuard};
use crate::health::Admission;
use crate::metrics::{FailureReason, GaugeGuard};
use crate::shared::{ClientSlot, Shared};
use crate::snapshot::{Snapshot, Upstream};
use crate::upstream::{EvictReason, UpstreamState};

/// One connection's task: its size is what every open connection costs in
/// memory besides the kernel's sockets and tokio's two I/O registrations
/// (`listener`'s test bounds it). `snapshot` is the one the accept loop
/// checked `max_connections` against; `slot` counts the client until the
/// connection ends.
pub(crate) fn handle(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
) -> Connection<impl Future<Output = Option<Proxying>> + Send> {
    // The set-up (the ring walk, each connect with its timer) takes more
    // room than the copy, but only for a round trip to a master; the copy
    // lasts the connection's life. Boxed, it costs one short-lived
    // allocation per connection instead of a task cell twice the size for
    // as long as the connection is open.
    Connection::Setup {
        setup: Box::pin(setup(slot, snapshot, client, peer)),
    }
}

pin_project_lite::pin_project! {
    /// The spawned task: the boxed set-up, then the proxied connection.
    #[project = ConnectionProj]
    pub(crate) enum Connection<S> {
        Setup { setup: Pin<Box<S>> },
        Proxying { #[pin] proxying: Proxying },
        Done,
    }
}

impl<S: Future<Output = Option<Proxying>>> Future for Connection<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ConnectionProj::Setup { setup } => match ready!(setup.as_mut().poll(cx)) {
                    Some(proxying) => {
                        self.set(Connection::Proxying { proxying });
                        if let ConnectionProj::Proxying { proxying } = self.as_mut().project()
                            && proxying.start()
                        {
                            continue;
                        }
                        self.set(Connection::Done);
                    }
                    None => self.set(Connection::Done),
                },
                // Done drops the sockets now, not when tokio frees the task.
                ConnectionProj::Proxying { proxying } => {
                    ready!(proxying.poll(cx));
                    self.set(Connection::Done);
                }
                ConnectionProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Connects to an upstream; what the copy needs comes back in `Proxying`.
async fn setup(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
) -> Option<Proxying> {
    let shared = slot.shared();
    let hash = snapshot.key_hash(peer);
    let Some(Connected {
        index,
        stream: upstream,
        home,
    }) = connect_any(shared, &snapshot, hash).await
    else {
        shared.metrics.rejected.no_upstream.inc();
        tracing::debug!(%peer, "no upstream accepted the connection; closing client");
        return None;
    };
    // Fail-back's record: established away from home, it holds a guard on
    // home's set and waits for a ticket. Boxed: only connections made
    // during an outage have one, and a pointer keeps every other
    // connection's task small (the wait alone is larger than the rest).
    let sent_home: Option<Box<SentHome>> = match failback::placed(Some(home), index) {
        Placement::Home => None,
        Placement::Displaced { home } => {
            let home = &snapshot.upstreams[home].state;
            DisplacedGuard::enter(&home.displaced).map(|guard| {
                let gauge = GaugeGuard::new(&home.metrics.connections_displaced);
                // Boxed twice: the outer box makes the field a thin
                // pointer, 8 bytes of every connection's task, not 16.
                Box::new(Box::pin(async move {
                    // Counted until the connection ends, however it ends.
                    let _gauge = gauge;
                    guard.sent_home().await
                }) as SentHome)
            })
        }
    };
    // Keep only what this connection needs, so an old snapshot (ring and
    // all) is freed once a reload replaces it, not when the last watch ends.
    let state = &snapshot.upstreams[index].state;
    tracing::debug!(%peer, upstream = %state.address, "proxying");
    let now = shared.clock.now_ms();
    let copy = copy::Copy::new(snapshot.settings.idle_timeout, now);
    // The waiter first: an eviction after it wakes this connection, one
    // before it is already counted in `evictions_seen`.
    let woken = shared.wheels.waiter(copy.due_ms(), now);
    let evictions_seen = state.evictions();
    Some(Proxying {
        woken,
        copy,
        close_on_down: snapshot.settings.close_on_down,
        evictions_seen,
        sent_home,
        attached: Attached::new(state.clone()),
        slot,
        client,
        upstream,
        peer_port: peer.port(),
    })
}

pin_project_lite::pin_project! {
    /// A connection once its upstream accepted it: the byte copy, raced
    /// against its waiter on its worker's wheel (an eviction, a removal by
    /// discovery, the end of the shutdown drain, the tick when it next looks
    /// at its idleness) and, for a displaced connection, the fail-back
    /// driver sending it home. Every open
    /// connection holds one, so it owns what it needs and nothing twice.
    pub(crate) struct Proxying {
        copy: copy::Copy,
        #[pin]
        woken: OwnedNotified,
        // Its upstream's `evictions` when this connection began waiting on
        // the wheel: a wake-up with another count is an eviction.
        evictions_seen: u32,
        sent_home: Option<Box<SentHome>>,
        attached: Attached,
        slot: ClientSlot,
        client: TcpStream,
        upstream: TcpStream,
        // For the log lines when the kernel no longer has the address (see
        // `Peer`); the port fits beside `close_on_down`, the address would
        // not.
        peer_port: u16,
        close_on_down: bool,
    }
}

impl Proxying {
    /// Looks at what it may have missed before its waiter existed: false if
    /// the connection must close at once.
    fn start(self: Pin<&mut Self>) -> bool {
        let p = self.project();
        let state = &p.attached.0;
        if p.slot.shared().force_close.is_cancelled() {
            state.metrics.closed_shutdown.inc();
            return false;
        }
        // Removed by discovery while this connection was being set up.
        !state.is_retired()
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut p = self.project();
        let state = &*p.attached.0;
        let shared = p.slot.shared();
        let (peer, upstream) = (Peer(p.client, *p.peer_port), &state.address);
        // Woken by the wheel: the copy looks at its idleness.
        let mut ticked = false;
        while p.woken.as_mut().poll(cx).is_ready() {
            // Wait again before looking why: whatever happens from here on
            // wakes the new waiter, and what happened before is seen below.
            let now = shared.clock.now_ms();
            p.woken.set(shared.wheels.waiter(p.copy.due_ms(), now));
            let m = &state.metrics;
            if shared.force_close.is_cancelled() {
                m.closed_shutdown.inc();
                return Poll::Ready(());
            }
            if state.is_retired() {
                tracing::debug!(%peer, %upstream, "closing: upstream removed by discovery");
                return Poll::Ready(());
            }
            let evictions = state.evictions();
            let evicted = evictions != *p.evictions_seen;
            *p.evictions_seen = evictions;
            if evicted && *p.close_on_down {
                match state.evict_reason() {
                    EvictReason::Dead => {
                        m.closed_upstream_down.inc();
                        tracing::debug!(%peer, %upstream, "closing: upstream marked down");
                    }
                    EvictReason::Draining => {
                        m.closed_upstream_draining.inc();
                        tracing::debug!(%peer, %upstream, "closing: upstream drained");
                    }
                }
                return Poll::Ready(());
            }
            // Not evicted (its tick, or another upstream's eviction), or
            // `close_on_down` is off: keep copying.
            ticked = true;
        }
        if let Some(f) = p.sent_home.as_mut()
            && f.as_mut().as_mut().poll(cx).is_ready()
        {
            state.metrics.closed_failback.inc();
            tracing::debug!(%peer, %upstream, "closing: fail-back, home is usable again");
            return Poll::Ready(());
        }
        let m = &state.metrics;
        let ends = Ends {
            client: p.client,
            upstream: p.upstream,
            to_upstream: &m.bytes_to_upstream,
            to_client: &m.bytes_to_client,
            clock: &shared.clock,
        };
        let (result, totals) = ready!(p.copy.poll(cx, ends, ticked));
        let (to_upstream, to_client) = (totals.to_upstream, totals.to_client);
        match result {
            Ok(CopyEnd::Closed) => {
                tracing::debug!(%peer, %upstream, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "connection closed")
            }
            Ok(CopyEnd::IdleTimeout) => {
                m.closed_idle.inc();
                tracing::debug!(%peer, %upstream, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "idle timeout");
            }
            Err(e) => {
                tracing::debug!(%peer, %upstream, error = %e, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "connection ended with error")
            }
        }
        Poll::Ready(())
    }
}

/// The upstream a connection is proxied to, counted in its
/// `connections_total` and, until the connection ends, in
/// `connections_active`: the state and the gauge's guard in one pointer.
struct Attached(Arc<UpstreamState>);

impl Attached {
    fn new(state: Arc<UpstreamState>) -> Attached {
        state.metrics.connections_total.inc();
        state.metrics.connections_active.inc();
        Attached(state)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.metrics.connections_active.dec();
    }
}

/// The client's address in a log line: read from the socket only when the
/// line is logged. After a reset the kernel has forgotten it, and the port
/// is what is left.
struct Peer<'a>(&'a TcpStream, u16);

impl std::fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.peer_addr() {
            Ok(a) => a.fmt(f),
            Err(_) => write!(f, "?:{}", self.1),
        }
    }
}

/// Completes when fail-back picks this displaced connection to go home;
/// owns its `DisplacedGuard` and its gauge guard.
type SentHome = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An upstream connection, with where it stands on the ring.
struct Connected {
    index: usize,
    stream: TcpStream,
    /// The first upstream on the walk, usable or not (`failback::home`),
    /// read off the connect walk rather than looked up again.
    home: usize,
}

/// Tries upstreams in ring order from `hash`: first the usable ones, then,
/// if none of those connected, the ones marked down (the last resort against
/// false marks). At most `tries` connects in all.
async fn connect_any(shared: &Shared, snap: &Snapshot, hash: u32) -> Option<Connected> {
    let tries = snap.settings.tries;
    let mut attempts = 0;
    let mut skipped: u128 = 0;
    let mut first = None;
    for i in snap.ring.walk(hash) {
        let home = *first.get_or_insert(i);
        if attempts >= tries {
            return None;
        }
        let up = &snap.upstreams[i];
        if !up.state.is_resolved() {
            up.state.metrics.failure(FailureReason::Resolve).inc();
            continue;
        }
        let now = shared.clock.now_ms();
        // A draining upstream is left for the last-resort pass.
        if up.draining
            || !up.state.active.is_up()
            || up.state.passive.admit(up.policy, now) == Admission::Unusable
        {
            skipped |= 1 << i;
            continue;
        }
        attempts += 1;
        if let Some(stream) = try_connect(shared, snap, up).await {
            if shared.all_down.load(Ordering::Relaxed)
                && shared.all_down.swap(false, Ordering::AcqRel)
            {
                tracing::info!("an upstream is usable again; last-resort episode over");
            }
            return Some(Connected {
                index: i,
                stream,
                home,
            });
        }
    }
    if skipped == 0 || attempts >= tries {
        return None;
    }
    // Something was skipped, so the walk above yielded its first upstream.
    let home = first?;
    if !shared.all_down.swap(true, Ordering::AcqRel) {
        shared.metrics.all_upstreams_down.inc();
        tracing::warn!("no usable upstream; trying every upstream as a last resort");
    }
    for i in snap.ring.walk(hash) {
        if attempts >= tries {
            break;
        }
        if skipped & (1 << i) == 0 {
            continue;
        }
        attempts += 1;
        if let Some(stream) = try_connect(shared, snap, &snap.upstreams[i]).await {
            return Some(Connected {
                index: i,
                stream,
                home,
            });
        }
    }
    None
}

/// One connect to one upstream (each of its addresses in turn, within one
/// `connect_timeout`), with the outcome fed to passive health.
async fn try_connect(shared: &Shared, snap: &Snapshot, up: &Upstream) -> Option<TcpStream> {
    let state = &up.state;
    let start = Instant::now();
    let deadline = crate::clock::deadline(start, snap.settings.connect_timeout);
    let mut reason = FailureReason::Resolve;
    for addr in state.addrs().iter() {
        let socket = match copy::upstream_socket(*addr) {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors or memory here: our problem, not
                // the upstream's, so its health is left alone.
                tracing::debug!(error = %e, "could not create upstream socket");
                return None;
            }
        };
        match copy::connect(socket, *addr, deadline).await {
            Ok(stream) => {
                shared
                    .metrics
                    .connect_duration
                    .observe(start.elapsed().as_secs_f64());
                if let Some(t) = state.passive.on_success(shared.clock.now_ms()) {
                    state.passive_transition(t, "connect succeeded", Some(up.policy));
                }
                return Some(stream);
            }
            Err(e) => {
                let r = classify(&e);
                reason = r;
                if r == FailureReason::Timeout {
                    break;
                }
            }
        }
    }
    state.metrics.failure(reason).inc();
    tracing::debug!(upstream = %state.address, reason = reason.as_str(), "connect failed");
    if let Some(t) = state.passive.on_failure(up.policy, shared.clock.now_ms()) {
        state.passive_transition(t, reason.as_str(), Some(up.policy));
    }
    None
}

fn classify(e: &io::Error) -> FailureReason {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureReason::Refused,
        io::ErrorKind::TimedOut => FailureReason::Timeout,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => FailureReason::Reset,
        _ => FailureReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// One connection through `handle` to a listening upstream; returns
    /// whether its task ended by itself, and what the client then read.
    async fn one_connection(prepare: impl FnOnce(&Shared)) -> (bool, usize) {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared::for_config(&format!(
            "upstreams:\n  - address: {}\n",
            upstream.local_addr().unwrap()
        )));
        prepare(&shared);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, peer) = l.accept().await.unwrap();
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let task = handle(
            ClientSlot::new(shared.clone()),
            shared.snapshot.load_full(),
            near,
            peer,
        );
        // The upstream accepts (the kernel completes the connect) and stays
        // silent; nothing else would end the connection for an hour.
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_ok();
        let mut buf = [0u8; 16];
        let read = client.read(&mut buf).await.unwrap_or(0);
        (ended, read)
    }

    /// Removed by discovery while the connection was connecting: the wake
    /// came before its waiter existed, and `start` finds the flag.
    #[tokio::test]
    async fn a_connection_set_up_to_a_retired_upstream_closes_at_once() {
        let (ended, read) = one_connection(|s| s.snapshot.load().upstreams[0].state.retire()).await;
        assert!(ended, "the connection stayed open to a retired upstream");
        assert_eq!(read, 0, "the client sees the close");
    }

    /// Set up after the drain's end: `close_all` had nothing to wake yet.
    #[tokio::test]
    async fn a_connection_set_up_after_the_drain_ended_closes_at_once() {
        let closed = std::sync::Mutex::new(None);
        let (ended, read) = one_connection(|s| {
            s.close_all();
            *closed.lock().unwrap() = Some(s.snapshot.load().upstreams[0].state.clone());
        })
        .await;
        assert!(ended, "the connection outlived the drain");
        assert_eq!(read, 0, "the client sees the close");
        let state = closed.lock().unwrap().take().unwrap();
        assert_eq!(state.metrics.closed_shutdown.get(), 1);
    }

    /// Log lines name the client by its address while the kernel has it,
    /// and by the port kept aside once a reset made it forget.
    #[tokio::test]
    async fn log_lines_name_the_client_even_after_a_reset() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, peer) = l.accept().await.unwrap();
        assert_eq!(Peer(&near, peer.port()).to_string(), peer.to_string());
        // Linger 0: the close sends a reset.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while near.peer_addr().is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "no reset seen");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            Peer(&near, peer.port()).to_string(),
            format!("?:{}", peer.port())
        );
    }

    /// An eviction wakes every connection, wherever it waits on the
    /// proxy's wheels: only those of the evicted upstream close.
    #[tokio::test]
    async fn only_its_own_upstreams_eviction_closes_a_connection() {
        let (a, b) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let shared = Arc::new(Shared::for_config(&format!(
            "upstreams:\n  - address: {}\n  - address: {}\n",
            a.local_addr().unwrap(),
            b.local_addr().unwrap()
        )));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, peer) = l.accept().await.unwrap();
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let mut task = tokio::spawn(handle(
            ClientSlot::new(shared.clone()),
            shared.snapshot.load_full(),
            near,
            peer,
        ));
        let (own, _accepted) = tokio::select! {
            r = a.accept() => (0, r.unwrap()),
            r = b.accept() => (1, r.unwrap()),
        };
        let snap = shared.snapshot.load_full();
        let (own, other) = (&snap.upstreams[own].state, &snap.upstreams[1 - own].state);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while own.metrics.connections_active.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never proxying");
            tokio::task::yield_now().await;
        }
        // On this single-threaded runtime the woken task runs before the
        // test's next turn.
        other.evict(EvictReason::Dead);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !task.is_finished(),
            "closed by the other upstream's eviction"
        );
        own.evict(EvictReason::Dead);
        tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .expect("its own upstream's eviction did not close it")
            .unwrap();
        assert_eq!(own.metrics.closed_upstream_down.get(), 1);
        assert_eq!(other.metrics.closed_upstream_down.get(), 0);
    }

    /// The control: without either, the same connection stays open.
    #[tokio::test]
    async fn a_connection_to_a_live_upstream_stays_open() {
        let (ended, _) = one_connection(|_| {}).await;
        assert!(!ended, "the connection ended by itself");
    }
}
