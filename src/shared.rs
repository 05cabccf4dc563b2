//! State shared by every task of one running proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::wheel::Timers;

pub(crate) struct Shared {
    /// The one published view of the upstream set; see `snapshot`.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Client connections open now, for `max_connections`.
    pub clients: AtomicUsize,
    /// Inside a last-resort episode (every upstream unusable); logged once.
    pub all_down: AtomicBool,
    /// How many first flights may hedge (see `proxy::flight`).
    pub hedge_budget: crate::budget::HedgeBudget,
    /// Inside an accept-failure episode (e.g. out of descriptors), across
    /// all listeners, and when the last failure was (`Clock` ms).
    pub accept_failing: AtomicBool,
    pub accept_failed_at: AtomicU64,
    /// Set once shutdown has begun: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Cancelled when the drain grace is over (`close_all`): open
    /// connections close.
    pub force_close: CancellationToken,
    /// Every worker's wheels (see `wheel`), where every proxied connection
    /// waits: its idleness is looked at on its tick, and the end of the
    /// drain (`close_all`) wakes all of them.
    pub timers: Arc<Timers>,
    /// `listen` addresses not bound because the node has no IPv6 (see
    /// `listener::skippable`); named in `/readyz`.
    pub skipped_listen: Vec<Skipped>,
    /// The last config load and its result, for `/status`.
    pub last_load: ArcSwap<LoadRecord>,
    /// The data plane in force (`dataplane::start`), and the wake-up of
    /// the task that keeps the kernel's maps in step.
    pub dataplane: DataplaneView,
    /// Names and admits each new client connection (`clients`), on a
    /// thread of its own.
    pub resolver: crate::clients::Resolver,
}

/// What `/status` shows of the data plane, and how the control plane asks
/// the kernel maps' task to look again (a reload, an active check's
/// transition). Never touched on a connection's path.
#[derive(Default)]
pub(crate) struct DataplaneView {
    /// Set once at start-up; `None` in proxies built without `Server`.
    pub in_force: std::sync::OnceLock<InForce>,
    pub kick: tokio::sync::Notify,
    /// Kernel mode: each master as the kernel's maps showed it at the
    /// task's last look, for `/status`.
    pub kernel: ArcSwap<Vec<crate::kernel::BackendStatus>>,
}

impl DataplaneView {
    /// Asks the kernel maps' task to publish now, not at its next tick.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }
}

/// The data plane chosen at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InForce {
    /// `dataplane.mode` as configured.
    pub configured: crate::kernel::config::Mode,
    /// The kernel's programs rewrite connects (else only the proxy runs).
    pub kernel: bool,
    /// In `auto`, why the kernel could not be used.
    pub why_proxy: Option<String>,
    /// The instance's name under bpffs, in kernel mode.
    pub instance: Option<String>,
}

impl Shared {
    /// A running proxy's shared state, before any client or episode: what
    /// varies is the first snapshot, the timers of the table that made its
    /// upstream states, the metrics, the skipped `listen` addresses and the
    /// config file it was loaded from.
    pub(crate) fn new(
        snapshot: Snapshot,
        timers: Arc<Timers>,
        metrics: Metrics,
        skipped_listen: Vec<Skipped>,
        source: Option<std::path::PathBuf>,
    ) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: metrics.clone(),
            clock: Clock::new(),
            clients: AtomicUsize::new(0),
            all_down: AtomicBool::new(false),
            hedge_budget: Default::default(),
            accept_failing: AtomicBool::new(false),
            accept_failed_at: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            force_close: CancellationToken::new(),
            timers,
            skipped_listen,
            last_load: ArcSwap::from_pointee(LoadRecord::startup(source, Clock::unix_now())),
            dataplane: DataplaneView::default(),
            resolver: crate::clients::Resolver::start(metrics.clients.clone()),
        }
    }
}

impl Shared {
    /// Ends the shutdown's drain: every open connection closes. Each waits
    /// on a wheel rather than on `force_close` itself, which would cost every
    /// connection a second waiter; it finds the token cancelled when woken,
    /// and a connection set up after this finds it cancelled before it
    /// waits. Connections to an upstream a reload removed (a reload lets
    /// them finish, as nginx's does) wait on wheels of the same timers.
    pub(crate) fn close_all(&self) {
        self.force_close.cancel();
        self.timers.wake_all();
    }
}

#[cfg(test)]
impl Shared {
    /// A proxy's shared state for the config `yaml`, as unit tests need it:
    /// fresh metrics, every upstream given its literal address as resolved.
    pub(crate) fn for_config(yaml: &str) -> Shared {
        let config = crate::Config::parse(yaml, std::path::Path::new("t.yaml")).unwrap();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let mut table = crate::upstream::StateTable::default();
        let built = Snapshot::build(&config, &mut table, &metrics).unwrap();
        for u in &built.snapshot.upstreams {
            if let Ok(a) = u.config.address.parse() {
                u.state.set_addrs(vec![a]);
            }
        }
        Shared::new(built.snapshot, table.timers(), metrics, Vec::new(), None)
    }
}

/// A `listen` address left unbound because it cannot exist on this node
/// (see `listener::skippable`).
#[derive(Debug, Clone)]
pub(crate) struct Skipped {
    pub addr: std::net::SocketAddr,
    pub reason: &'static str,
}

/// One unit of `max_connections` and of the client gauge, held by a
/// connection's task for its life and returned on drop.
pub(crate) struct ClientSlot(Arc<Shared>);

impl ClientSlot {
    /// The caller has already counted the client in `shared.clients`.
    pub(crate) fn new(shared: Arc<Shared>) -> ClientSlot {
        shared.metrics.client_connections_active.inc();
        ClientSlot(shared)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.0
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.client_connections_active.dec();
    }
}

/// The last time the config file was loaded, kept by the reloader for
/// `/status`. Written on start-up and on each reload (rare), never on the
/// proxy's path.
#[derive(Debug, Clone)]
pub(crate) struct LoadRecord {
    pub file: Option<PathBuf>,
    /// Unix seconds.
    pub at: f64,
    pub kind: LoadKind,
    pub result: LoadResult,
    pub error: Option<String>,
    /// Fields the file changed that only apply at start-up: the running
    /// process keeps their old values until it is restarted.
    pub restart_needed: Vec<&'static str>,
}

impl LoadRecord {
    pub(crate) fn startup(file: Option<PathBuf>, at: f64) -> LoadRecord {
        LoadRecord {
            file,
            at,
            kind: LoadKind::Startup,
            result: LoadResult::Success,
            error: None,
            restart_needed: Vec::new(),
        }
    }

    pub(crate) fn reload(file: Option<PathBuf>, at: f64, error: Option<String>) -> LoadRecord {
        LoadRecord {
            restart_needed: Vec::new(),
            file,
            at,
            kind: LoadKind::Reload,
            result: match error {
                None => LoadResult::Success,
                Some(_) => LoadResult::Failure,
            },
            error,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LoadKind {
    Startup,
    Reload,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LoadResult {
    Success,
    Failure,
}
