//! One client connection: choose upstreams in ring order (`choice`),
//! connect with failover (`setup`), see the client's first flight answered
//! or hedge it to the next master (`flight`, with its `budget`), then copy
//! both ways (`proxying`, `copy::Copy`) until either side ends, the
//! upstream is evicted or removed, fail-back sends a displaced connection
//! home, or shutdown forces the close.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

mod budget;
mod flight;
mod proxying;
mod setup;

pub(crate) use budget::HedgeBudget;
use proxying::Proxying;

use crate::shared::ClientSlot;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamState;
use crate::wheel::Worker;

/// One connection's task: its size is what every open connection costs in
/// memory besides the kernel's sockets and tokio's two I/O registrations
/// (`listener`'s test bounds it). `snapshot` is the one the accept loop
/// checked `max_connections` against; `slot` counts the client until the
/// connection ends; `worker` is the worker whose wheels it waits on.
pub(crate) fn handle(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
    worker: Worker,
) -> Connection<impl Future<Output = Option<Proxying>> + Send> {
    // The set-up (the ring walk, each connect with its timer, the first
    // flight) takes more room than the copy, but only for a round trip to
    // a master; the copy lasts the connection's life. Boxed, it costs one
    // short-lived allocation per connection instead of a task cell twice
    // the size for as long as the connection is open.
    Connection::Setup {
        setup: Box::pin(setup::setup(slot, snapshot, client, peer, worker)),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::shared::Shared;
    use crate::upstream::EvictReason;
    use crate::wheel::with_worker;
    use std::sync::atomic::Ordering;

    /// One connection through `handle` to a listening upstream; returns
    /// whether its task ended by itself, and what the client then read.
    async fn one_connection(prepare: impl FnOnce(&Shared)) -> (bool, usize) {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Hedging off: the client of these tests sends nothing.
        let shared = Arc::new(Shared::for_config(&format!(
            "first_byte_timeout: 0s\nupstreams:\n  - address: {}\n",
            upstream.local_addr().unwrap()
        )));
        prepare(&shared);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, peer) = l.accept().await.unwrap();
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let timers = shared.timers.clone();
        with_worker(&timers, Duration::from_millis(50), |worker| async move {
            let task = handle(
                ClientSlot::new(shared.clone()),
                shared.snapshot.load_full(),
                near,
                peer,
                worker,
            );
            // The upstream accepts (the kernel completes the connect) and
            // stays silent; nothing else would end the connection for an
            // hour.
            let ended = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_ok();
            let mut buf = [0u8; 16];
            let read = client.read(&mut buf).await.unwrap_or(0);
            (ended, read)
        })
        .await
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

    /// An eviction wakes its own upstream's connections: only those close.
    #[tokio::test]
    async fn only_its_own_upstreams_eviction_closes_a_connection() {
        let (a, b) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let shared = Arc::new(Shared::for_config(&format!(
            "first_byte_timeout: 0s\nupstreams:\n  - address: {}\n  - address: {}\n",
            a.local_addr().unwrap(),
            b.local_addr().unwrap()
        )));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, peer) = l.accept().await.unwrap();
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let timers = shared.timers.clone();
        with_worker(&timers, Duration::from_secs(3600), |worker| async move {
            let mut task = tokio::spawn(handle(
                ClientSlot::new(shared.clone()),
                shared.snapshot.load_full(),
                near,
                peer,
                worker,
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
        })
        .await;
    }

    /// The control: without either, the same connection stays open.
    #[tokio::test]
    async fn a_connection_to_a_live_upstream_stays_open() {
        let (ended, _) = one_connection(|_| {}).await;
        assert!(!ended, "the connection ended by itself");
    }
}
