//! Per-upstream runtime state that outlives config snapshots: health, the
//! resolved addresses, metric handles, the eviction signal and the
//! connections displaced from it (fail-back). A reload that
//! keeps an upstream (same literal address) keeps this object.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32};

use arc_swap::ArcSwap;

use crate::failback::registry::DisplacedSet;
use crate::health::{ActiveHealth, PassiveHealth, Policy, Transition};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::own::OwnSockets;
use crate::wheel::{Timers, UpstreamWheels, Worker};

pub struct UpstreamState {
    pub address: String,
    pub passive: PassiveHealth,
    pub active: ActiveHealth,
    /// Runtime state like health, not configuration: the resolver updates it
    /// on its own schedule, and nothing else has to agree with it. Never
    /// one of cplb's own sockets (`set_addrs` leaves those out).
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// cplb's own listening sockets, which `set_addrs` keeps out of `addrs`.
    own: Arc<OwnSockets>,
    /// Every address it resolved to is one of cplb's own sockets: never
    /// dialled, shown as `self`.
    is_self: AtomicBool,
    /// Inside an episode of first flights it did not answer (hedging):
    /// logged at its first hedge and when it answers again, not per hedge.
    silent: AtomicBool,
    pub metrics: UpstreamMetrics,
    /// Where this upstream's proxied connections wait, one wheel per worker
    /// (see `wheel`): an eviction or a removal here wakes them, and no other
    /// upstream's.
    wheels: UpstreamWheels,
    /// How many times the active check has evicted this upstream: a woken
    /// connection that saw a lower count is one of the evicted.
    evictions: AtomicU32,
    /// An `EvictReason`, stored by the prober (the only writer) before it
    /// counts the eviction and wakes the wheels; read by each evicted
    /// connection.
    evict_reason: AtomicU8,
    /// Set once, when discovery removes this upstream after
    /// `remove_after`: its remaining connections close whatever
    /// `close_on_down` says (a decommissioned master must not keep clients).
    retired: AtomicBool,
    /// Connections whose home this is, running elsewhere (fail-back). In
    /// an `Arc` because each of them holds a guard on it.
    pub(crate) displaced: Arc<DisplacedSet>,
    /// The last transition and why, for `cplb status`. Written only on a
    /// transition (rare), read only by the admin endpoint: an `ArcSwap`
    /// keeps the writer lock-free and the proxy's path never touches it.
    last_change: ArcSwap<Change>,
    /// Name resolution's log throttle. Only the resolver takes the lock,
    /// never the proxy's path.
    pub resolve_log: std::sync::Mutex<crate::resolve::throttle::ResolveLog>,
}

/// Why the active check closes an upstream's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum EvictReason {
    /// No answer, refused, TLS failure: closed at once.
    Dead = 0,
    /// It answered "not ready" and `drain_grace` has passed.
    Draining = 1,
}

/// Which part of cplb changed an upstream's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeCause {
    /// The initial state, before any connection or probe.
    Start,
    /// Connect failures or successes (`max_fails` / `fail_timeout`).
    Passive,
    /// The active health check (rise / fall), or checks being turned off.
    Active,
}

impl ChangeCause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeCause::Start => "start",
            ChangeCause::Passive => "passive",
            ChangeCause::Active => "active",
        }
    }
}

/// One state transition of an upstream.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// `Clock` milliseconds.
    pub at_ms: u64,
    pub cause: ChangeCause,
    pub reason: String,
}

impl UpstreamState {
    pub(crate) fn new(
        address: &str,
        metrics: &Metrics,
        timers: Arc<Timers>,
        own: Arc<OwnSockets>,
    ) -> UpstreamState {
        let m = metrics.upstream(address);
        m.up.set(1);
        UpstreamState {
            address: address.to_string(),
            passive: PassiveHealth::default(),
            active: ActiveHealth::default(),
            addrs: ArcSwap::from_pointee(Vec::new()),
            own,
            is_self: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            metrics: m,
            wheels: UpstreamWheels::new(timers),
            evictions: AtomicU32::new(0),
            evict_reason: AtomicU8::new(EvictReason::Dead as u8),
            retired: AtomicBool::new(false),
            displaced: Arc::default(),
            last_change: ArcSwap::from_pointee(Change {
                at_ms: 0,
                cause: ChangeCause::Start,
                reason: "usable until a connect or a check fails".into(),
            }),
            resolve_log: Default::default(),
        }
    }

    /// Closes the connections still open to this upstream (discovery
    /// removed it). A connection that registers after this sees `is_retired`.
    pub fn retire(&self) {
        self.retired.store(true, Release);
        self.wheels.wake_all();
    }

    /// Closes the connections open to this upstream, counted under `why`.
    pub(crate) fn evict(&self, why: EvictReason) {
        self.evict_reason.store(why as u8, Release);
        // Before the wake, which orders it before the woken connections'
        // reads.
        self.evictions.fetch_add(1, Release);
        self.wheels.wake_all();
    }

    /// A waiter for a connection to this upstream on `worker`: woken at the
    /// first tick at or after `due_ms`, or by this upstream's eviction or
    /// removal, or by the drain's end.
    pub(crate) fn waiter(
        &self,
        worker: Worker,
        due_ms: u64,
        now_ms: u64,
    ) -> tokio::sync::futures::OwnedNotified {
        self.wheels.waiter(worker, due_ms, now_ms)
    }

    /// A connection hedged away from it: it took a first flight and sent
    /// nothing back within `first_byte_timeout`. Logged once per episode.
    pub(crate) fn start_silence(&self) {
        if !self.silent.swap(true, AcqRel) {
            tracing::warn!(
                upstream = %self.address,
                "upstream accepted a connection but did not answer its first bytes within first_byte_timeout; hedging to the next master"
            );
        }
    }

    /// It answered a first flight: a silent episode, if any, is over.
    pub(crate) fn end_silence(&self) {
        if self.silent.load(Relaxed) && self.silent.swap(false, AcqRel) {
            tracing::info!(upstream = %self.address, "upstream answers first flights again");
        }
    }

    /// How many times `evict` has run.
    pub(crate) fn evictions(&self) -> u32 {
        self.evictions.load(Acquire)
    }

    /// Why the last `evict` closed connections.
    pub(crate) fn evict_reason(&self) -> EvictReason {
        match self.evict_reason.load(Acquire) {
            1 => EvictReason::Draining,
            _ => EvictReason::Dead,
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Acquire)
    }

    /// The last transition, for `cplb status`.
    pub(crate) fn last_change(&self) -> Arc<Change> {
        self.last_change.load_full()
    }

    fn note_change(&self, cause: ChangeCause, reason: String, now: u64) {
        self.last_change.store(Arc::new(Change {
            at_ms: now,
            cause,
            reason,
        }));
    }

    pub(crate) fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// The addresses to dial, from the resolver or discovery. Those that
    /// are cplb's own listening sockets are left out: dialling one would
    /// loop every client back into cplb. When that leaves none, the
    /// upstream is `self` (logged on the change, never dialled).
    pub(crate) fn set_addrs(&self, mut addrs: Vec<SocketAddr>) {
        let mut own = None;
        addrs.retain(|a| match self.own.receiving(*a) {
            Some(l) => {
                own.get_or_insert((*a, l));
                false
            }
            None => true,
        });
        let is_self = addrs.is_empty() && own.is_some();
        let was_self = self.is_self.swap(is_self, AcqRel);
        // Logged on a change only: a reload re-resolves every name.
        let changed = was_self != is_self || **self.addrs.load() != addrs;
        if was_self != is_self {
            self.metrics.is_self.set(is_self as i64);
            self.refresh_up_gauge();
        }
        match own {
            Some((addr, listen)) if changed && is_self => {
                tracing::warn!(upstream = %self.address, %addr, %listen, "upstream is cplb's own listen address; it is never dialled")
            }
            Some((addr, listen)) if changed => {
                tracing::warn!(upstream = %self.address, %addr, %listen, "one of the upstream's addresses is cplb's own listen address; it is never dialled")
            }
            _ => {}
        }
        self.addrs.store(Arc::new(addrs));
    }

    pub(crate) fn is_resolved(&self) -> bool {
        !self.addrs.load().is_empty()
    }

    /// Its every address is one of cplb's own sockets.
    pub(crate) fn is_self(&self) -> bool {
        self.is_self.load(Acquire)
    }

    /// Usable for new connections: both checks allow it, and it has an
    /// address (never one of cplb's own).
    pub(crate) fn is_usable(&self, policy: Policy, now: u64) -> bool {
        self.active.is_up() && self.passive.is_usable(policy, now) && self.is_resolved()
    }

    /// At a transition `usable` changes with the marks; a passive mark that
    /// lapsed after `fail_timeout`, and resolution, are caught up at scrape
    /// time (`Snapshot::refresh_up_gauges`).
    fn refresh_up_gauge(&self) {
        let up = self.active.is_up() && !self.passive.is_down() && !self.is_self();
        self.metrics.up.set(up as i64);
    }

    /// Logs and counts a passive-health transition: once per transition,
    /// never once per failure. `policy` only adds context to the log.
    pub(crate) fn passive_transition(&self, t: Transition, reason: &str, policy: Option<Policy>) {
        self.metrics.state_changes.inc();
        self.refresh_up_gauge();
        let why = match t {
            Transition::MarkedDown => format!("connect failed: {reason}"),
            Transition::MarkedUp => reason.to_string(),
        };
        self.note_change(ChangeCause::Passive, why, self.passive.since_ms());
        match t {
            Transition::MarkedDown => tracing::warn!(
                upstream = %self.address,
                reason,
                max_fails = policy.map(|p| p.max_fails),
                retry_after_ms = policy.map(|p| p.fail_timeout_ms),
                "upstream marked down"
            ),
            Transition::MarkedUp => {
                tracing::info!(upstream = %self.address, check = "passive", reason, "upstream back up")
            }
        }
    }

    /// Records the active check's verdict; true if it changed.
    pub(crate) fn set_active(&self, up: bool, now: u64, detail: &str) -> bool {
        if !self.active.set(up, now) {
            return false;
        }
        self.metrics.state_changes.inc();
        self.refresh_up_gauge();
        self.note_change(ChangeCause::Active, detail.to_string(), now);
        if up {
            tracing::info!(upstream = %self.address, check = "active", "upstream back up");
        } else {
            tracing::warn!(upstream = %self.address, check = "active", reason = detail, "upstream marked down");
        }
        true
    }
}

/// Upstream states by literal address, kept by whoever builds snapshots.
pub struct StateTable {
    states: HashMap<String, Arc<UpstreamState>>,
    /// The workers' timers, given to every state made here.
    timers: Arc<Timers>,
    /// cplb's own sockets, which no state made here ever dials.
    own: Arc<OwnSockets>,
}

impl Default for StateTable {
    /// For one worker, listening nowhere.
    fn default() -> StateTable {
        StateTable::new(Timers::new(1), OwnSockets::default())
    }
}

impl StateTable {
    /// A table whose states' connections wait on `timers`' wheels, and
    /// that never dial `own`.
    pub(crate) fn new(timers: Arc<Timers>, own: OwnSockets) -> StateTable {
        StateTable {
            states: HashMap::new(),
            timers,
            own: Arc::new(own),
        }
    }

    /// The timers of every state this table makes, for `Shared::timers`.
    pub(crate) fn timers(&self) -> Arc<Timers> {
        self.timers.clone()
    }

    /// The state for `address`, created (and reported as new) if absent.
    pub(crate) fn get_or_create(
        &mut self,
        address: &str,
        metrics: &Metrics,
    ) -> (Arc<UpstreamState>, bool) {
        if let Some(s) = self.states.get(address) {
            return (s.clone(), false);
        }
        let s = Arc::new(UpstreamState::new(
            address,
            metrics,
            self.timers.clone(),
            self.own.clone(),
        ));
        self.states.insert(address.to_string(), s.clone());
        (s, true)
    }

    /// Drops every state whose address is not in `keep`; returns them.
    pub(crate) fn retain(&mut self, keep: &[&str]) -> Vec<Arc<UpstreamState>> {
        let gone: Vec<String> = self
            .states
            .keys()
            .filter(|k| !keep.contains(&k.as_str()))
            .cloned()
            .collect();
        gone.iter().filter_map(|k| self.states.remove(k)).collect()
    }
}
