//! The resolver: one thread that names each new client connection and
//! decides its admission, so no accept and no worker thread ever waits on
//! netlink or `/proc`. A connection's set-up hands it a `Request` through
//! a bounded queue (no lock, no allocation: a slot of a preallocated ring)
//! and awaits the answer on a oneshot (one small allocation, beside the
//! set-up's own box). A full queue, or a request that waited longer than
//! `SHED_AFTER`, is answered as `other` at once: naming may be lost under
//! a flood, a connection is never held up for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::client::ClientGuard;
use super::config::ClientsConfig;
use super::diag::{Diag, Owner};
use super::identity::{Identity, pod_of};
use super::metrics::ClientMetrics;
use super::procs::{self, Finder, Visibility};
use super::registry::{Ask, Reason, Registry};

/// Requests waiting at most; beyond, new connections go unnamed. Kept
/// small: each waiting connection holds its set-up box meanwhile, and a
/// burst of them left holes in the heap between the long-lived task
/// cells (512 cost about 90 bytes per idle connection in
/// tests/conn_memory.rs). A burst is shed, not queued.
const QUEUE: usize = 64;
/// A request older than this is answered without a look.
const SHED_AFTER: Duration = Duration::from_millis(200);

/// One new connection, as its set-up saw it.
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub config: Arc<ClientsConfig>,
    /// Client connections open now (this one included).
    pub open: usize,
    pub max_connections: usize,
}

struct Request {
    conn: Conn,
    at: Instant,
    reply: oneshot::Sender<Result<ClientGuard, Reason>>,
}

/// The handle connections use: the queue and the registry it fills.
pub(crate) struct Resolver {
    tx: SyncSender<Request>,
    pub registry: Arc<Registry>,
}

impl Resolver {
    /// Starts the thread; it ends when the `Resolver` is dropped.
    pub(crate) fn start(metrics: ClientMetrics) -> Resolver {
        let visibility = Visibility::of_this_process();
        let registry = Arc::new(Registry::new(metrics, visibility.clone()));
        let (tx, rx) = sync_channel(QUEUE);
        let reg = registry.clone();
        let spawned = std::thread::Builder::new()
            .name("cplb-clients".into())
            .spawn(move || run(rx, &reg, &visibility));
        if let Err(e) = spawned {
            // Every request then fails to send and is counted as `other`.
            tracing::warn!(error = %e, "could not start the client resolver; clients go unnamed");
        }
        Resolver { tx, registry }
    }

    /// Asks for a connection's admission; `None`: no answer will come
    /// (queue full or no thread), so it goes as `other`, unlimited.
    pub(crate) fn ask(&self, conn: Conn) -> Option<oneshot::Receiver<Result<ClientGuard, Reason>>> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            conn,
            at: Instant::now(),
            reply,
        };
        match self.tx.try_send(req) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

fn run(rx: Receiver<Request>, registry: &Registry, visibility: &Visibility) {
    let mut diag = match Diag::open() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "sock_diag is not available: clients are not named");
            None
        }
    };
    let mut finder = Finder::new(visibility);
    let mut seen = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(req) = rx.recv() {
        let started = Instant::now();
        // What has queued meanwhile is looked up together.
        batch.push(req);
        while batch.len() < BATCH
            && let Ok(req) = rx.try_recv()
        {
            batch.push(req);
        }
        let now = Instant::now();
        let owners: Vec<Option<Owner>> = batch
            .iter()
            .map(|r| {
                let fresh = now.duration_since(r.at) <= SHED_AFTER;
                diag.as_mut()
                    .filter(|_| fresh)
                    .and_then(|d| d.owner(r.conn.peer, r.conn.local).ok().flatten())
            })
            .collect();
        let wanted: Vec<Option<(u32, u32)>> =
            owners.iter().map(|o| o.map(|o| (o.inode, o.uid))).collect();
        let pids = finder.pids(&wanted);
        for ((req, owner), pid) in batch.drain(..).zip(owners).zip(pids) {
            let id = identify(owner, pid, &mut seen);
            let ask = Ask {
                id: &id,
                config: &req.conn.config,
                open: req.conn.open,
                max_connections: req.conn.max_connections,
            };
            // The connection may have gone meanwhile: its guard drops here.
            let _ = req.reply.send(registry.admit(&ask, Instant::now()));
        }
        // The CPU budget: naming is worth a share of one core, never the
        // proxy's parity. Under a connection flood the queue fills while
        // the thread rests and the rest go as `other`; a node's ordinary
        // rate leaves it idle anyway.
        std::thread::sleep(rest_after(started.elapsed()));
    }
}

/// The resolver works at most `1 / (1 + REST)` of the time: measured with
/// `bench/e2e`'s `Connection: close` runs, naming every connection
/// doubled the proxy's CPU per new connection.
const REST: u32 = 19;
/// The longest rest: a connection that waits for its name (a limit is
/// configured) waits this much longer at most.
const MAX_REST: Duration = Duration::from_millis(50);

fn rest_after(worked: Duration) -> Duration {
    worked.saturating_mul(REST).min(MAX_REST)
}

/// Requests looked up together at most.
const BATCH: usize = 64;

/// How long a process's name and cgroup are taken as read: a process
/// rarely changes either, and reading two files per connection was most
/// of the resolver's time under a connection flood.
const PROC_TTL: Duration = Duration::from_secs(5);
/// Processes whose name and cgroup are kept; past it, all are read again.
const PROC_CACHE: usize = 256;

/// What `/proc` said of a pid, and when.
pub(crate) struct Seen {
    at: Instant,
    comm: Option<String>,
    cgroup: Option<String>,
}

/// Everything that may be known of a client from its socket's owner and
/// the process holding it.
pub(crate) fn identify(
    owner: Option<Owner>,
    pid: Option<u32>,
    seen: &mut HashMap<u32, Seen>,
) -> Identity {
    let mut id = Identity::default();
    let Some(owner) = owner else {
        return id;
    };
    id.uid = Some(owner.uid);
    let Some(pid) = pid else {
        return id;
    };
    id.pid = Some(pid);
    let now = Instant::now();
    if seen
        .get(&pid)
        .is_none_or(|s| now.duration_since(s.at) > PROC_TTL)
    {
        if seen.len() >= PROC_CACHE {
            seen.clear();
        }
        let fresh = Seen {
            at: now,
            comm: procs::comm(pid),
            cgroup: procs::cgroup(pid),
        };
        seen.insert(pid, fresh);
    }
    if let Some(s) = seen.get(&pid) {
        id.comm = s.comm.clone();
        id.cgroup = s.cgroup.clone();
    }
    id.pod = id.cgroup.as_deref().and_then(pod_of);
    id
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_resolver_rests_nineteen_times_its_work_up_to_fifty_ms() {
        assert_eq!(
            rest_after(Duration::from_millis(1)),
            Duration::from_millis(19)
        );
        assert_eq!(rest_after(Duration::from_millis(10)), MAX_REST);
        assert_eq!(rest_after(Duration::ZERO), Duration::ZERO);
    }
}
