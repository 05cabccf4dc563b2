//! One client connection: pick upstreams in ring order, connect with
//! failover, then hand both sockets to `copy::bidirectional` until either side ends,
//! the upstream is evicted, fail-back sends a displaced connection home, or
//! shutdown forces the close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::copy::{self, CopyEnd};
use crate::failback::{self, Placement, registry::DisplacedGuard};
use crate::health::Admission;
use crate::metrics::{FailureReason, GaugeGuard};
use crate::shared::{ClientSlot, Shared};
use crate::snapshot::{Snapshot, Upstream};
use crate::upstream::EvictReason;

/// One connection's task: its size is what every open connection costs in
/// memory besides the kernel's sockets (`listener`'s test bounds it).
/// `snapshot` is the one the accept loop checked `max_connections` against;
/// `slot` counts the client until the connection ends.
pub(crate) async fn handle(
    slot: ClientSlot,
    snapshot: Arc<Snapshot>,
    client: TcpStream,
    peer: SocketAddr,
) {
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
        return;
    };
    // Fail-back's record: established away from home, it holds a guard on
    // home's set and waits for a ticket. Boxed: only connections made
    // during an outage have one, and a pointer keeps every other
    // connection's task small (the wait alone is larger than the rest).
    let mut sent_home: Option<SentHome> = match failback::placed(Some(home), index) {
        Placement::Home => None,
        Placement::Displaced { home } => {
            let home = &snapshot.upstreams[home].state;
            DisplacedGuard::enter(&home.displaced).map(|guard| {
                let gauge = GaugeGuard::new(&home.metrics.connections_displaced);
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
    let state = snapshot.upstreams[index].state.clone();
    let idle_timeout = snapshot.settings.idle_timeout;
    let close_on_down = snapshot.settings.close_on_down;
    drop(snapshot);

    let m = &state.metrics;
    m.connections_total.inc();
    let _active = GaugeGuard::new(&m.connections_active);
    tracing::debug!(%peer, upstream = %state.address, "proxying");

    let evicted = state.evict.notified();
    tokio::pin!(evicted);
    evicted.as_mut().enable();
    let retired = state.retire.notified();
    tokio::pin!(retired);
    retired.as_mut().enable();
    if state.is_retired() {
        // Removed by discovery while this connection was being set up.
        return;
    }
    let copy = copy::bidirectional(
        &client,
        &upstream,
        idle_timeout,
        &m.bytes_to_upstream,
        &m.bytes_to_client,
    );
    tokio::select! {
        (result, totals) = copy => match result {
            Ok(CopyEnd::Closed) => tracing::debug!(%peer, upstream = %state.address, bytes_to_upstream = totals.to_upstream, bytes_to_client = totals.to_client, "connection closed"),
            Ok(CopyEnd::IdleTimeout) => {
                m.closed_idle.inc();
                tracing::debug!(%peer, upstream = %state.address, bytes_to_upstream = totals.to_upstream, bytes_to_client = totals.to_client, "idle timeout");
            }
            Err(e) => tracing::debug!(%peer, upstream = %state.address, error = %e, bytes_to_upstream = totals.to_upstream, bytes_to_client = totals.to_client, "connection ended with error"),
        },
        _ = &mut evicted, if close_on_down => match state.evict_reason() {
            EvictReason::Dead => {
                m.closed_upstream_down.inc();
                tracing::debug!(%peer, upstream = %state.address, "closing: upstream marked down");
            }
            EvictReason::Draining => {
                m.closed_upstream_draining.inc();
                tracing::debug!(%peer, upstream = %state.address, "closing: upstream drained");
            }
        },
        _ = &mut retired => {
            tracing::debug!(%peer, upstream = %state.address, "closing: upstream removed by discovery");
        }
        _ = async { if let Some(f) = sent_home.as_mut() { f.await } }, if sent_home.is_some() => {
            m.closed_failback.inc();
            tracing::debug!(%peer, upstream = %state.address, "closing: fail-back, home is usable again");
        }
        _ = shared.force_close.cancelled() => {
            m.closed_shutdown.inc();
        }
    }
}

/// Completes when fail-back picks this displaced connection to go home;
/// owns its `DisplacedGuard` and its gauge guard.
type SentHome = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
