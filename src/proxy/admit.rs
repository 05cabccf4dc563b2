//! A new connection's admission by its local client (`clients`): the
//! set-up asks the resolver thread and awaits its answer, so neither the
//! accept loop nor the worker ever waits on netlink or `/proc`; only this
//! connection waits, for one hop to that thread (measured in
//! docs/operations.md).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::clients::{ClientGuard, Conn};
use crate::shared::ClientSlot;
use crate::snapshot::Snapshot;

pub(super) enum Admitted {
    Named(ClientGuard),
    /// Not named (the resolver's queue was full, or it is gone): counted
    /// nowhere per client, and no per-client limit applies.
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
    let conn = Conn {
        peer,
        local,
        config: snapshot.settings.clients.clone(),
        open: shared.clients.load(Ordering::Acquire),
        max_connections: snapshot.settings.max_connections,
    };
    let Some(answer) = shared.resolver.ask(conn) else {
        return Admitted::Unnamed;
    };
    match answer.await {
        Ok(Ok(guard)) => Admitted::Named(guard),
        Ok(Err(reason)) => {
            tracing::debug!(%peer, ?reason, "refused by a per-client limit; closing");
            Admitted::Refused
        }
        Err(_) => Admitted::Unnamed,
    }
}
