//! A new connection's admission by its local client (`clients`). The
//! set-up asks the resolver thread; neither the accept loop nor the worker
//! ever waits on netlink or `/proc`. The connection itself waits for the
//! answer only when a decision depends on it (a limit is configured, or
//! fair share is near `max_connections`), so a refusal comes before any
//! master is dialled; otherwise it goes on at once and is named when the
//! answer comes (`Pending`), which saves the thread hop's latency on every
//! connection (docs/operations.md has the figures).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::clients::{self, ClientGuard, Conn, Reason};
use crate::shared::ClientSlot;
use crate::snapshot::Snapshot;

/// The resolver's answer, still to come.
pub(super) type Pending = oneshot::Receiver<Result<ClientGuard, Reason>>;

pub(super) enum Admitted {
    Named(ClientGuard),
    /// Answer to come: the connection goes on, and is named (or closed,
    /// if over a limit meanwhile) when it comes.
    Pending(Pending),
    /// Not named (the resolver's queue was full, or it is gone): counted
    /// as nothing per client, and no per-client limit applies.
    Unnamed,
    /// Over a limit: counted and logged by the registry; close at once.
    Refused,
}

pub(super) async fn admit(
    slot: &ClientSlot,
    snapshot: &Snapshot,
    client: &TcpStream,
    peer: SocketAddr,
) -> Admitted {
    let shared = slot.shared();
    let Ok(local) = client.local_addr() else {
        return Admitted::Unnamed;
    };
    let config = &snapshot.settings.clients;
    let (open, max) = (
        shared.clients.load(Ordering::Acquire),
        snapshot.settings.max_connections,
    );
    let wait =
        !config.limits.is_empty() || (config.fair_share && clients::fair_share_near(open, max));
    let conn = Conn {
        peer,
        local,
        config: config.clone(),
        open,
        max_connections: max,
    };
    let Some(answer) = shared.resolver.ask(conn) else {
        return Admitted::Unnamed;
    };
    if !wait {
        return Admitted::Pending(answer);
    }
    settle(answer.await, peer)
}

/// What a connection does with the resolver's answer.
pub(super) fn settle(
    answer: Result<Result<ClientGuard, Reason>, oneshot::error::RecvError>,
    peer: SocketAddr,
) -> Admitted {
    match answer {
        Ok(Ok(guard)) => Admitted::Named(guard),
        Ok(Err(reason)) => {
            tracing::debug!(%peer, ?reason, "refused by a per-client limit; closing");
            Admitted::Refused
        }
        Err(_) => Admitted::Unnamed,
    }
}
