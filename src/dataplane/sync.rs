//! The task that keeps the kernel's maps in step with the snapshot and
//! the health of its masters, and feeds the kernel's per-master counters
//! into the proxy's metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::tables::{self, Built};
use crate::kernel::{KernelError, Plane, Tables};
use crate::logfmt::Chain;
use crate::metrics::FailureReason;
use crate::shared::Shared;

/// How often the maps are looked at without a kick: a passive mark that
/// lapsed, an address the resolver changed, the counters for /metrics.
const TICK: Duration = Duration::from_millis(500);
/// A wildcard listen address stands for the host's addresses at publish
/// time: published again this often to follow them.
const REPUBLISH: Duration = Duration::from_secs(30);

/// What one task run keeps between looks.
#[derive(Default)]
struct Step {
    last: Option<Built>,
    published_at: Option<Instant>,
    /// The kernel's counters as last read, per master, and how much of
    /// `open` is in the gauge.
    seen: HashMap<SocketAddr, Seen>,
    /// Inside an episode of failed writes: logged at its start and end.
    failing: bool,
    /// Each master's eviction count (`UpstreamState::evictions`) as last
    /// acted on.
    evictions: HashMap<SocketAddr, u32>,
    /// The state of each master last published, to tell one discovery
    /// removed (`is_retired`) from one a reload dropped.
    states: HashMap<SocketAddr, Arc<crate::upstream::UpstreamState>>,
    failback: super::failback::KernelFailback,
}

#[derive(Clone, Copy)]
struct Seen {
    connects: u64,
    failures: u64,
    open: i64,
}

/// The plane and what the task knows of it, kept across the task's
/// restarts: a restarted run goes on from the same counters (no open
/// connection counted twice) and publishes again (`last` is dropped).
pub(crate) struct Kept {
    plane: Plane,
    step: Step,
}

impl Kept {
    pub(crate) fn new(plane: Plane) -> Arc<Mutex<Kept>> {
        Arc::new(Mutex::new(Kept {
            plane,
            step: Step::default(),
        }))
    }
}

/// Runs until `stop`: publishes at once, then on each kick (a reload, an
/// active check's transition) and each tick.
pub(crate) async fn run(
    shared: Arc<Shared>,
    kept: Arc<Mutex<Kept>>,
    listen: Vec<SocketAddr>,
    stop: CancellationToken,
) {
    kept.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .step
        .last = None;
    loop {
        let snap = shared.snapshot.load_full();
        let now_ms = shared.clock.now_ms();
        let built = tables::build(&snap, &listen, now_ms);
        let (kept, view) = (kept.clone(), shared.clone());
        // Map writes and reads are system calls: off the control-plane
        // thread, as a publish of 4096 slots takes milliseconds.
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = kept.lock().unwrap_or_else(PoisonError::into_inner);
            let Kept { plane, step } = &mut *guard;
            let result = step.apply(plane, built);
            step.report(result);
            step.close_evicted(plane, &snap);
            if let Some(built) = &step.last {
                step.failback.tick(plane, built, &snap, now_ms);
            }
            let read = plane.backends();
            if let Ok(read) = &read {
                view.dataplane.kernel.store(Arc::new(read.clone()));
            }
            step.counters(&snap, read);
        })
        .await;
        match done {
            Ok(()) => {}
            // To the supervisor, which logs, counts and restarts.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The blocking pool is gone: the runtime is shutting down.
            Err(_) => return,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.dataplane.kick.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

impl Step {
    /// Writes what changed: nothing, the usable flags of some masters (one
    /// write each), or a whole publish.
    fn apply(&mut self, plane: &mut Plane, built: Built) -> Result<(), KernelError> {
        let due = self.published_at.is_none_or(|t| t.elapsed() >= REPUBLISH);
        let last = self.last.as_ref().map(|b| &b.tables);
        let came_up = |t: &Tables| -> Vec<SocketAddr> {
            t.backends
                .iter()
                .filter(|b| {
                    b.usable
                        && last.is_some_and(|l| {
                            l.backends.iter().any(|o| o.addr == b.addr && !o.usable)
                        })
                })
                .map(|b| b.addr)
                .collect()
        };
        let up = came_up(&built.tables);
        match last {
            Some(l) if *l == built.tables && !due => return Ok(()),
            Some(l) if !due && same_but_usable(l, &built.tables) => {
                for (old, new) in l.backends.iter().zip(&built.tables.backends) {
                    if old.usable != new.usable {
                        plane.set_usable(new.addr, new.usable)?;
                    }
                }
            }
            _ => {
                plane.publish(&built.tables)?;
                if self.published_at.is_none() {
                    let t = &built.tables;
                    tracing::info!(
                        masters = t.backends.len(),
                        usable = t.backends.iter().filter(|b| b.usable).count(),
                        "kernel data plane tables published: connects to the listen addresses are rewritten to usable masters"
                    );
                }
                self.published_at = Some(Instant::now());
            }
        }
        // Usable again (an active check passed): the kernel's own passive
        // mark goes too, as the proxy's does on a passing probe.
        for addr in up {
            plane.clear_down(addr)?;
        }
        self.last = Some(built);
        Ok(())
    }

    /// Closes the rewritten connections of a master the active check
    /// evicted since the last look (dead at once, draining after
    /// `drain_grace`; the prober decides, with the proxy's rules, and
    /// counts an eviction), with `SOCK_DESTROY`, under the proxy's
    /// `cplb_connections_closed_total` labels. An eviction from before
    /// this run started is a baseline.
    fn close_evicted(&mut self, plane: &Plane, snap: &crate::snapshot::Snapshot) {
        let Some(built) = &self.last else {
            return;
        };
        let states: HashMap<SocketAddr, Arc<crate::upstream::UpstreamState>> = built
            .upstream_of
            .iter()
            .zip(&built.tables.backends)
            .filter_map(|(&i, b)| Some((b.addr, snap.upstreams.get(i)?.state.clone())))
            .collect();
        // Removed by discovery after `remove_after`: its connections close,
        // whatever `close_on_down` says, as the proxy's do. One a reload
        // dropped keeps them (nginx's reload lets them finish).
        for (addr, st) in std::mem::replace(&mut self.states, states) {
            if self.states.contains_key(&addr) || !st.is_retired() {
                continue;
            }
            match plane.destroy_to(addr, crate::kernel::Filter::all()) {
                Ok(n) => {
                    tracing::info!(upstream = %st.address, closed = n, "closed rewritten connections of an upstream discovery removed")
                }
                Err(e) => {
                    tracing::warn!(upstream = %st.address, error = %Chain(&e), "could not close the rewritten connections of an upstream discovery removed")
                }
            }
        }
        for (b, &i) in built.upstream_of.iter().enumerate() {
            let (Some(master), Some(up)) = (built.tables.backends.get(b), snap.upstreams.get(i))
            else {
                continue;
            };
            let now = up.state.evictions();
            let was = self.evictions.insert(master.addr, now);
            if was.is_none_or(|w| w == now) {
                continue;
            }
            let m = &up.state.metrics;
            match plane.destroy_to(master.addr, crate::kernel::Filter::all()) {
                Ok(n) => {
                    let counter = match up.state.evict_reason() {
                        crate::upstream::EvictReason::Dead => &m.closed_upstream_down,
                        crate::upstream::EvictReason::Draining => &m.closed_upstream_draining,
                    };
                    counter.inc_by(n as u64);
                    if n > 0 {
                        tracing::info!(upstream = %up.state.address, closed = n, "closed rewritten connections of an evicted upstream");
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %up.state.address, error = %Chain(&e), "could not close the rewritten connections of an evicted upstream")
                }
            }
        }
    }

    /// Logs the start and the end of an episode of failed writes.
    fn report(&mut self, result: Result<(), KernelError>) {
        match (result, self.failing) {
            (Err(e), false) => {
                self.failing = true;
                // Published again whole at the next look.
                self.last = None;
                tracing::error!(error = %Chain(&e), "could not update the kernel data plane's maps; connects are chosen from the last tables written until this succeeds");
            }
            (Err(_), true) => self.last = None,
            (Ok(()), true) => {
                self.failing = false;
                tracing::info!("the kernel data plane's maps are up to date again");
            }
            (Ok(()), false) => {}
        }
    }

    /// Adds what the kernel counted since the last look to the proxy's
    /// per-upstream series: connects to `cplb_connections_total`, failed
    /// connects to `cplb_connect_failures_total{reason="other"}` (the
    /// programs cannot tell a refusal from a timeout), open rewritten
    /// connections to `cplb_connections_active`. Counts from before this
    /// process started are a baseline, not an increase.
    fn counters(
        &mut self,
        snap: &crate::snapshot::Snapshot,
        read: Result<Vec<crate::kernel::BackendStatus>, KernelError>,
    ) {
        let Ok(read) = read else {
            return;
        };
        let Some(built) = &self.last else {
            return;
        };
        for k in read {
            let Some(b) = built.tables.backends.iter().position(|b| b.addr == k.addr) else {
                continue;
            };
            let Some(up) = built
                .upstream_of
                .get(b)
                .and_then(|&i| snap.upstreams.get(i))
            else {
                continue;
            };
            let m = &up.state.metrics;
            let now = Seen {
                connects: k.connects,
                failures: k.failures,
                open: k.open.max(0),
            };
            match self.seen.insert(k.addr, now) {
                None => m.connections_active.add(now.open),
                Some(was) => {
                    m.connections_total
                        .inc_by(now.connects.saturating_sub(was.connects));
                    m.failure(FailureReason::Other)
                        .inc_by(now.failures.saturating_sub(was.failures));
                    m.connections_active.add(now.open - was.open);
                }
            }
        }
    }
}

/// The same services and masters, only some usable flags differ.
fn same_but_usable(a: &Tables, b: &Tables) -> bool {
    a.services == b.services
        && a.backends.len() == b.backends.len()
        && a.backends.iter().zip(&b.backends).all(|(x, y)| {
            x.addr == y.addr && x.max_fails == y.max_fails && x.fail_timeout_ms == y.fail_timeout_ms
        })
}
