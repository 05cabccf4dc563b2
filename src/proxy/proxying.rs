//! A connection once its upstream accepted it (and, with hedging,
//! answered): `Proxying` runs the byte copy, raced against one waiter on
//! its upstream's wheel and, for a displaced connection, fail-back sending
//! it home.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;

use super::admit::Pending;
use crate::clients::ClientGuard;
use crate::copy::{self, CopyEnd, Ends};
use crate::shared::{ClientSlot, Shared};
use crate::snapshot::Settings;
use crate::upstream::{EvictReason, UpstreamState};
use crate::wheel::Worker;

/// The upstream a connection is proxied to, counted in its
/// `connections_total` and, until the connection ends, in
/// `connections_active`: the state and the gauge's guard in one pointer.
pub(super) struct Attached(Arc<UpstreamState>);

impl Attached {
    pub(super) fn new(state: Arc<UpstreamState>) -> Attached {
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
pub(super) type SentHome = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What only some connections carry, boxed together so that the field
/// is one thin pointer (8 bytes of every connection's task, which must
/// stay in its 384-byte task cell: `listener`'s test): fail-back's record
/// of a displaced connection, and its local client's guard (`clients`,
/// counted open until the connection ends) or the resolver's answer still
/// to come. One allocation of 48 bytes for a connection with any; none
/// without.
pub(super) struct Extras {
    sent_home: Option<SentHome>,
    client: Option<ClientGuard>,
    pending: Option<Pending>,
    /// Its upstream's index, for the client's masters once it is named.
    index: usize,
}

impl Extras {
    pub(super) fn new(
        sent_home: Option<SentHome>,
        client: Option<ClientGuard>,
        pending: Option<Pending>,
        index: usize,
    ) -> Option<Box<Extras>> {
        (sent_home.is_some() || client.is_some() || pending.is_some()).then(|| {
            Box::new(Extras {
                sent_home,
                client,
                pending,
                index,
            })
        })
    }

    /// Takes the resolver's answer if it has come: false if the client is
    /// over a limit and the connection must close.
    fn named(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(answer) = self.pending.as_mut() else {
            return true;
        };
        let Poll::Ready(answer) = Pin::new(answer).poll(cx) else {
            return true;
        };
        self.pending = None;
        match answer {
            Ok(Ok(guard)) => {
                guard.went_to(self.index);
                self.client = Some(guard);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => true,
        }
    }
}

/// Why a connection's waiter woke; `Proxying::woke` is the one place that
/// answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Its tick: the copy looks at its idleness.
    Tick,
    /// The active check closed its upstream's connections.
    Evicted(EvictReason),
    /// Discovery removed its upstream (`remove_after`).
    Retired,
    /// The shutdown drain's grace is over.
    Drained,
}

pin_project_lite::pin_project! {
    /// Every open connection holds one, so it owns what it needs and
    /// nothing twice.
    pub(crate) struct Proxying {
        copy: copy::Copy,
        #[pin]
        woken: OwnedNotified,
        // Its upstream's `evictions` (the low 16 bits: evictions are rare,
        // so the count never wraps round to an equal value unseen) when
        // this connection began waiting on the wheel: a wake-up with
        // another count is an eviction. Two bytes, so that it, the port,
        // the worker and `close_on_down` share one word.
        evictions_seen: u16,
        extras: Option<Box<Extras>>,
        attached: Attached,
        slot: ClientSlot,
        client: TcpStream,
        upstream: TcpStream,
        // For the log lines when the kernel no longer has the address (see
        // `Peer`); the port and the worker fit beside `close_on_down`, the
        // address would not.
        peer_port: u16,
        worker: Worker,
        close_on_down: bool,
    }
}

impl Proxying {
    /// Starts waiting at once: an eviction after this wakes the
    /// connection, one before it is already counted in `evictions_seen`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        settings: &Settings,
        attached: Attached,
        extras: Option<Box<Extras>>,
        slot: ClientSlot,
        client: TcpStream,
        upstream: TcpStream,
        flight: copy::Flight,
        peer_port: u16,
        worker: Worker,
    ) -> Proxying {
        let now = slot.shared().clock.now_ms();
        let copy = copy::Copy::new(settings.idle_timeout, now, flight);
        let state = &attached.0;
        let woken = state.waiter(worker, copy.due_ms(), now);
        let evictions_seen = state.evictions() as u16;
        Proxying {
            copy,
            woken,
            evictions_seen,
            extras,
            attached,
            slot,
            client,
            upstream,
            peer_port,
            worker,
            close_on_down: settings.close_on_down,
        }
    }

    /// Looks at what it may have missed before its waiter existed: false if
    /// the connection must close at once.
    pub(super) fn start(self: Pin<&mut Self>) -> bool {
        let p = self.project();
        let state = &p.attached.0;
        if p.slot.shared().force_close.is_cancelled() {
            state.metrics.closed_shutdown.inc();
            return false;
        }
        // Removed by discovery while this connection was being set up.
        !state.is_retired()
    }

    /// Why the waiter woke, from what the events left behind; updates the
    /// eviction count seen.
    fn woke(shared: &Shared, state: &UpstreamState, evictions_seen: &mut u16) -> Wake {
        if shared.force_close.is_cancelled() {
            return Wake::Drained;
        }
        if state.is_retired() {
            return Wake::Retired;
        }
        let evictions = state.evictions() as u16;
        if evictions != *evictions_seen {
            *evictions_seen = evictions;
            return Wake::Evicted(state.evict_reason());
        }
        Wake::Tick
    }

    pub(super) fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut p = self.project();
        let state = &*p.attached.0;
        let shared = p.slot.shared();
        let (peer, upstream) = (Peer(p.client, *p.peer_port), &state.address);
        let m = &state.metrics;
        // Woken by the wheel: the copy looks at its idleness.
        let mut ticked = false;
        while p.woken.as_mut().poll(cx).is_ready() {
            // Wait again before looking why: whatever happens from here on
            // wakes the new waiter, and what happened before is seen below.
            let now = shared.clock.now_ms();
            p.woken.set(state.waiter(*p.worker, p.copy.due_ms(), now));
            match Self::woke(shared, state, p.evictions_seen) {
                Wake::Drained => {
                    m.closed_shutdown.inc();
                    return Poll::Ready(());
                }
                Wake::Retired => {
                    tracing::debug!(%peer, %upstream, "closing: upstream removed by discovery");
                    return Poll::Ready(());
                }
                Wake::Evicted(why) if *p.close_on_down => {
                    match why {
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
                // `close_on_down` is off: keep copying.
                Wake::Evicted(_) => {}
                Wake::Tick => ticked = true,
            }
        }
        if let Some(e) = p.extras.as_mut()
            && !e.named(cx)
        {
            tracing::debug!(%peer, %upstream, "closing: its client is over a limit");
            return Poll::Ready(());
        }
        if let Some(f) = p.extras.as_mut().and_then(|e| e.sent_home.as_mut())
            && f.as_mut().poll(cx).is_ready()
        {
            m.closed_failback.inc();
            tracing::debug!(%peer, %upstream, "closing: fail-back, home is usable again");
            return Poll::Ready(());
        }
        let ends = Ends {
            client: p.client,
            upstream: p.upstream,
            to_upstream: &m.bytes_to_upstream,
            to_client: &m.bytes_to_client,
            clock: &shared.clock,
            // Only a tick arms it (with keepalive): no load otherwise.
            user_timeout: if ticked {
                shared.snapshot.load().settings.tcp_user_timeout
            } else {
                None
            },
        };
        let (result, totals) = ready!(p.copy.poll(cx, ends, ticked));
        let (to_upstream, to_client) = (totals.to_upstream, totals.to_client);
        if let Some(c) = p.extras.as_ref().and_then(|e| e.client.as_ref()) {
            c.moved(to_upstream, to_client);
        }
        match result {
            Ok(CopyEnd::Closed) => {
                tracing::debug!(%peer, %upstream, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "connection closed")
            }
            Ok(CopyEnd::IdleTimeout) => {
                m.closed_idle.inc();
                tracing::debug!(%peer, %upstream, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "idle timeout");
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                // TCP_USER_TIMEOUT: the master stopped acknowledging (it
                // vanished mid-stream). Closing the client now lets it
                // reconnect to another master.
                m.closed_upstream_timeout.inc();
                tracing::debug!(%peer, %upstream, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "closing: upstream stopped acknowledging (tcp_user_timeout)");
            }
            Err(e) => {
                tracing::debug!(%peer, %upstream, error = %e, bytes_to_upstream = to_upstream, bytes_to_client = to_client, "connection ended with error")
            }
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;

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
}
