//! A connection's task (`handle`): its set-up, boxed, chooses upstreams in
//! ring order (`choice`, with the proxy's view of each upstream's
//! standing), connects and sees the first flight answered (`connect`),
//! then the task becomes the `Proxying` that copies the bytes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

use super::admit::Admitted;
use super::connect::{Attempt, Connected, connect_next, first_flight};
use super::proxying::{Attached, Extras, Proxying, SentHome};
use crate::choice::{Choice, Standing};
use crate::clients::Identify;
use crate::copy;
use crate::failback::{self, Placement, registry::DisplacedGuard};
use crate::health::Admission;
use crate::metrics::{FailureReason, GaugeGuard};
use crate::shared::{ClientSlot, Shared};
use crate::snapshot::{Snapshot, Upstream};
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
        setup: Box::pin(setup(slot, snapshot, client, peer, worker)),
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
pub(super) async fn setup(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
    worker: Worker,
) -> Option<Proxying> {
    let mut admitted = Admitted::Unnamed;
    if snapshot.settings.clients.identify == Identify::Auto {
        admitted = super::admit::admit(&slot, &snapshot, &client, peer).await;
        if let Admitted::Refused = admitted {
            return None;
        }
    }
    let shared = slot.shared();
    let hash = snapshot.key_hash(peer);
    let hedging = snapshot.settings.first_byte_timeout;
    let mut choice = Choice::new(&snapshot.ring, hash, snapshot.settings.tries, |i| {
        standing(shared, &snapshot.upstreams[i])
    });
    // With hedging on, a connect is not yet a success: a frozen master's
    // kernel still completes handshakes. Its first byte is (`flight`).
    let attempt = match hedging {
        None => Attempt::Connect,
        Some(_) => Attempt::FirstFlight,
    };
    let mut connected = connect_next(shared, &snapshot, &mut choice, attempt).await;
    let mut flight = copy::Flight::default();
    if let Some(timeout) = hedging
        && let Some(up) = connected.take()
    {
        shared.hedge_budget.attempt(shared.clock.now_ms());
        let (up, first) = first_flight(shared, &snapshot, &mut choice, &client, up, timeout).await;
        (connected, flight) = (Some(up), first);
    }
    let Some(Connected {
        index,
        stream: upstream,
    }) = connected
    else {
        shared.metrics.rejected.no_upstream.inc();
        tracing::debug!(%peer, "no upstream accepted the connection; closing client");
        return None;
    };
    // Fail-back's record: established away from home, it holds a guard on
    // home's set and waits for a ticket. Boxed: only connections made
    // during an outage have one, and a pointer keeps every other
    // connection's task small (the wait alone is larger than the rest).
    let sent_home: Option<SentHome> = match failback::placed(choice.home(), index) {
        Placement::Home => None,
        Placement::Displaced { home } => {
            let home = &snapshot.upstreams[home].state;
            DisplacedGuard::enter(&home.displaced).map(|guard| {
                let gauge = GaugeGuard::new(&home.metrics.connections_displaced);
                // Kept in `Extras` (see there).
                Box::pin(async move {
                    // Counted until the connection ends, however it ends.
                    let _gauge = gauge;
                    guard.sent_home().await
                }) as SentHome
            })
        }
    };
    // Keep only what this connection needs, so an old snapshot (ring and
    // all) is freed once a reload replaces it, not when the last watch ends.
    let state = &snapshot.upstreams[index].state;
    // The answer may have come while connecting.
    if let Admitted::Pending(answer) = &mut admitted
        && let Ok(answer) = answer.try_recv()
    {
        admitted = super::admit::settle(Ok(answer), peer);
    }
    let (named, pending) = match admitted {
        Admitted::Named(guard) => {
            guard.went_to(index);
            (Some(guard), None)
        }
        Admitted::Pending(answer) => (None, Some(answer)),
        Admitted::Unnamed => (None, None),
        Admitted::Refused => return None,
    };
    tracing::debug!(%peer, upstream = %state.address, "proxying");
    Some(Proxying::new(
        &snapshot.settings,
        Attached::new(state.clone()),
        Extras::new(sent_home, named, pending, index),
        slot,
        client,
        upstream,
        flight,
        peer.port(),
        worker,
    ))
}

/// How upstream `up` stands for a new connection now: the proxy's view
/// for `choice`. Asking grants a passive-health trial to a marked-down
/// upstream whose `fail_timeout` has passed, so it is asked only just
/// before a connect.
fn standing(shared: &Shared, up: &Upstream) -> Standing {
    if !up.state.is_resolved() {
        // Its own address only (never dialled) is not a failure to count.
        if !up.state.is_self() {
            up.state.metrics.failure(FailureReason::Resolve).inc();
        }
        return Standing::Never;
    }
    // A draining upstream is left for the last resort.
    if up.draining
        || !up.state.active.is_up()
        || up.state.passive.admit(up.policy, shared.clock.now_ms()) == Admission::Unusable
    {
        return Standing::LastResort;
    }
    Standing::Usable
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
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
