//! A connection's set-up: choose upstreams in ring order (`choice`),
//! connect with failover and the last resort, and, when hedging is on, see
//! the client's first flight answered (`flight`). What the copy needs comes
//! back in a `Proxying`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::flight;
use super::proxying::{Attached, Proxying, SentHome};
use crate::choice::{Choice, Pass, Standing};
use crate::copy;
use crate::failback::{self, Placement, registry::DisplacedGuard};
use crate::health::Admission;
use crate::metrics::{FailureReason, GaugeGuard};
use crate::shared::{ClientSlot, Shared};
use crate::snapshot::{Snapshot, Upstream};
use crate::wheel::Worker;

/// Connects to an upstream; what the copy needs comes back in `Proxying`.
pub(super) async fn setup(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
    worker: Worker,
) -> Option<Proxying> {
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
    let mut answer = None;
    if let Some(timeout) = hedging
        && let Some(up) = connected.take()
    {
        shared.hedge_budget.attempt(shared.clock.now_ms());
        let (up, first) =
            flight::first_flight(shared, &snapshot, &mut choice, &client, up, timeout).await;
        (connected, answer) = (Some(up), first);
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
    let sent_home: Option<Box<SentHome>> = match failback::placed(choice.home(), index) {
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
    Some(Proxying::new(
        &snapshot.settings,
        Attached::new(state.clone()),
        sent_home,
        slot,
        client,
        upstream,
        answer,
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

/// An upstream connection, with where it stands on the ring.
pub(super) struct Connected {
    pub index: usize,
    pub stream: TcpStream,
}

/// What a connect is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// A new connection, hedging off: a connect is a success for passive
    /// health (nginx's rule).
    Connect,
    /// A new connection, hedging on: the master's first byte is the
    /// success (`flight`), not the connect.
    FirstFlight,
    /// A hedge: usable masters only, never the last resort.
    Hedge,
}

/// Connects to the next candidates of `choice` until one accepts: the
/// usable ones first, then (once none is left, and not for a hedge) the
/// last resort, whose episode is logged once.
pub(super) async fn connect_next<V: FnMut(usize) -> Standing>(
    shared: &Shared,
    snap: &Snapshot,
    choice: &mut Choice<'_, V>,
    attempt: Attempt,
) -> Option<Connected> {
    let count_success = attempt == Attempt::Connect;
    for (index, pass) in choice.by_ref() {
        if pass == Pass::LastResort && attempt == Attempt::Hedge {
            return None;
        }
        if pass == Pass::LastResort && !shared.all_down.swap(true, Ordering::AcqRel) {
            shared.metrics.all_upstreams_down.inc();
            tracing::warn!("no usable upstream; trying every upstream as a last resort");
        }
        let Some(stream) = try_connect(shared, snap, &snap.upstreams[index], count_success).await
        else {
            continue;
        };
        if pass == Pass::First
            && shared.all_down.load(Ordering::Relaxed)
            && shared.all_down.swap(false, Ordering::AcqRel)
        {
            tracing::info!("an upstream is usable again; last-resort episode over");
        }
        return Some(Connected { index, stream });
    }
    None
}

/// One connect to one upstream (each of its addresses in turn, within one
/// `connect_timeout`), with a failure fed to passive health, and a success
/// too with `count_success`.
async fn try_connect(
    shared: &Shared,
    snap: &Snapshot,
    up: &Upstream,
    count_success: bool,
) -> Option<TcpStream> {
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
                if count_success {
                    passive_success(shared, up, "connect succeeded");
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
    passive_failure(shared, up, reason.as_str());
    None
}

/// A success for `up`'s passive health: clears a mark, logged on the change.
pub(super) fn passive_success(shared: &Shared, up: &Upstream, why: &str) {
    let state = &up.state;
    if let Some(t) = state.passive.on_success(shared.clock.now_ms()) {
        state.passive_transition(t, why, Some(up.policy));
    }
}

/// A failure for `up`'s passive health (`max_fails` within `fail_timeout`).
pub(super) fn passive_failure(shared: &Shared, up: &Upstream, reason: &str) {
    let state = &up.state;
    if let Some(t) = state.passive.on_failure(up.policy, shared.clock.now_ms()) {
        state.passive_transition(t, reason, Some(up.policy));
    }
}

fn classify(e: &io::Error) -> FailureReason {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureReason::Refused,
        io::ErrorKind::TimedOut => FailureReason::Timeout,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => FailureReason::Reset,
        _ => FailureReason::Other,
    }
}
