//! Connecting a new connection to a master: the candidates of `choice` in
//! order with failover and the last resort (`connect_next`), and, when
//! hedging is on, the first flight (`first_flight`).
//!
//! The hedged first flight. A frozen or overloaded master still completes
//! TCP handshakes (its kernel does), so a connect that succeeds says
//! nothing about whether it will answer. Once the client's first bytes (a
//! TLS ClientHello) have gone to the chosen master, the connection waits
//! `first_byte_timeout` for a byte back. None came: it connects to the next
//! usable master of the same ring walk (`choice`), replays the kept bytes
//! there and closes the silent one. The silent master takes a passive
//! failure, so after `max_fails` hedges it stops being chosen.
//!
//! Safe only while nothing has gone back to the client: the first byte
//! from a master commits the connection, and the copy forwards it. So do
//! a client that sends more than `Replay::CAP` before any answer (it
//! cannot be replayed whole), a client that sends nothing (a
//! server-speaks-first protocol: nothing to replay), and a spent hedging
//! budget (`budget`: hedges must not double the load on slow masters).

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::choice::{Choice, Pass, Standing};
use crate::copy::{self, Answer, Replay};
use crate::metrics::{FailureReason, Hedge};
use crate::shared::Shared;
use crate::snapshot::{Snapshot, Upstream};

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

/// Sees the first flight of `client` answered by `up` or by a master it
/// hedged to, and returns the upstream the connection is committed to
/// with the master's first bytes, for the copy to write to the client; the
/// client's bytes it forwarded are gone from the client's socket, and are
/// counted here and in the copy's totals, as the copy would count them.
pub(super) async fn first_flight<V: FnMut(usize) -> Standing>(
    shared: &Shared,
    snap: &Snapshot,
    choice: &mut Choice<'_, V>,
    client: &TcpStream,
    up: Connected,
    timeout: Duration,
) -> (Connected, copy::Flight) {
    let mut kept = Replay::default();
    let (up, answer) = flight(shared, snap, choice, client, up, timeout, &mut kept).await;
    // What went to a master the connection left was replayed to this one:
    // its bytes are this master's.
    let forwarded = kept.len() as u64;
    snap.upstreams[up.index]
        .state
        .metrics
        .bytes_to_upstream
        .inc_by(forwarded);
    (up, copy::Flight { answer, forwarded })
}

async fn flight<V: FnMut(usize) -> Standing>(
    shared: &Shared,
    snap: &Snapshot,
    choice: &mut Choice<'_, V>,
    client: &TcpStream,
    mut up: Connected,
    timeout: Duration,
    kept: &mut Replay,
) -> (Connected, Option<Answer>) {
    let mut client_eof = false;
    // Until the client's first bytes: how long a silent client may take
    // before it is taken for server-speaks-first. From then on: when the
    // master in charge must have answered.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    // The silent master this connection hedged away from, whose hedge's
    // result waits on the master now in charge.
    let mut hedged_from: Option<usize> = None;
    loop {
        let take_client = !client_eof && !kept.is_full();
        tokio::select! {
            biased;
            r = up.stream.readable() => {
                match r.and_then(|()| Answer::read_from(&up.stream)) {
                    Ok(Some(answer)) => {
                        answered(shared, snap, &up, hedged_from);
                        return (up, Some(answer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // Closed or reset before any answer: the copy passes
                    // that on to the client.
                    _ => return (up, None),
                }
            }
            r = client.readable(), if take_client => {
                if r.is_err() {
                    return (up, None);
                }
                let before = kept.len();
                match kept.read_from(client) {
                    Ok(0) => {
                        client_eof = true;
                        // The half-close goes on, as the copy would pass it.
                        let _ = socket2::SockRef::from(&up.stream).shutdown(std::net::Shutdown::Write);
                    }
                    Ok(_) => {
                        if kept.write_to(before, &mut up.stream).await.is_err() {
                            return (up, None);
                        }
                        if before == 0 {
                            deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return (up, None),
                }
                if kept.is_full() {
                    // More than can be replayed: committed to this master.
                    return (up, None);
                }
            }
            _ = &mut deadline => {
                if kept.len() == 0 {
                    // The client sends nothing first: nothing to replay.
                    // Its connect is all the success there is to count.
                    passive_success(shared, &snap.upstreams[up.index], "connect succeeded");
                    return (up, None);
                }
                if let Some(from) = hedged_from.take() {
                    snap.upstreams[from].state.metrics.hedge(Hedge::Failed).inc();
                }
                match hedge(shared, snap, choice, kept, client_eof, &up).await {
                    Some(next) => {
                        hedged_from = Some(up.index);
                        // Dropping the silent master's socket closes it: its
                        // answer, should one still come, is never read.
                        up = next;
                        deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    // Nowhere else to go, or over the budget: wait here.
                    None => return (up, None),
                }
            }
        }
    }
}

/// `up` answered the first flight.
fn answered(shared: &Shared, snap: &Snapshot, up: &Connected, hedged_from: Option<usize>) {
    let ours = &snap.upstreams[up.index];
    passive_success(shared, ours, "answered");
    ours.state.end_silence();
    if let Some(from) = hedged_from {
        snap.upstreams[from]
            .state
            .metrics
            .hedge(Hedge::Answered)
            .inc();
    }
}

/// Hedges away from `silent`: a passive failure for it, then the next
/// usable master of the walk, with the kept bytes (and the client's
/// half-close) replayed. `None` when the budget is spent or no other
/// master connected: the connection keeps waiting on `silent`.
async fn hedge<V: FnMut(usize) -> Standing>(
    shared: &Shared,
    snap: &Snapshot,
    choice: &mut Choice<'_, V>,
    kept: &Replay,
    client_eof: bool,
    silent: &Connected,
) -> Option<Connected> {
    let from = &snap.upstreams[silent.index];
    let metrics = &from.state.metrics;
    if !shared.hedge_budget.try_hedge(shared.clock.now_ms()) {
        metrics.hedge(Hedge::Skipped).inc();
        return None;
    }
    from.state.start_silence();
    passive_failure(shared, from, "no answer within first_byte_timeout");
    let Some(mut next) = connect_next(shared, snap, choice, Attempt::Hedge).await else {
        metrics.hedge(Hedge::Failed).inc();
        return None;
    };
    if next_replay(kept, client_eof, &mut next).await.is_err() {
        metrics.hedge(Hedge::Failed).inc();
        return None;
    }
    tracing::debug!(
        from = %from.state.address,
        to = %snap.upstreams[next.index].state.address,
        bytes = kept.len(),
        "hedged the first flight"
    );
    Some(next)
}

async fn next_replay(kept: &Replay, client_eof: bool, next: &mut Connected) -> std::io::Result<()> {
    kept.write_to(0, &mut next.stream).await?;
    if client_eof {
        socket2::SockRef::from(&next.stream).shutdown(std::net::Shutdown::Write)?;
    }
    Ok(())
}
