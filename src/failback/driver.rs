//! The fail-back driver: one task per proxy (spawned by `server`, stopped
//! when shutdown begins). Every `TICK` on the proxy's clock it looks at
//! each upstream of the current snapshot as a *home*: how many connections
//! are displaced from it (`DisplacedSet::count`) and whether it is usable.
//! A home with displaced connections gets a `HomeSchedule`; each close the
//! schedule asks for becomes one ticket (`DisplacedSet::grant_one`), which
//! one displaced connection takes and closes itself (`proxy::handle`).
//!
//! Usable, for a home, is what it is for a new connection
//! (`UpstreamState::is_usable`) and not draining (discovery lost it).
//! A connection displaced since the last tick means home failed a connect
//! in between, so it was not continuously usable: settle starts again.
//! Home unusable: untaken tickets are revoked at once, and the schedule
//! moves nothing until home has settled again (never make things worse).
//!
//! Logs: one line when an episode starts (home, displaced, delay) and one
//! when it ends (closed, remaining, why); never one per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::registry::DisplacedSet;
use super::{EndReason, Event, Failback, HomeSchedule};
use crate::shared::Shared;
use crate::upstream::UpstreamState;

/// How often the driver looks. The schedule's spacing (500 ms at the
/// default rate) is kept exactly; a tick only delays a close by up to this.
const TICK: Duration = Duration::from_millis(100);

/// One home with displaced connections (or an episode under way).
struct Home {
    state: Arc<UpstreamState>,
    schedule: HomeSchedule,
    /// `DisplacedSet::entered` at the last tick.
    entered: u64,
    /// Set while an episode runs: when it started, and `closed()` then.
    episode: Option<(u64, u64)>,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut driver = Driver::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        driver.tick(&shared);
    }
}

#[derive(Default)]
struct Driver {
    homes: HashMap<String, Home>,
    /// The policy and node delay the schedules were made with.
    policy: Option<(Failback, Duration)>,
}

impl Driver {
    fn tick(&mut self, shared: &Shared) {
        let snap = shared.snapshot.load();
        let now = shared.clock.now_ms();
        let policy = (snap.settings.failback, snap.settings.failback_delay);
        if self.policy != Some(policy) {
            // Start-up, or a reload changed `failback`: every schedule
            // starts over, so settle counts again from now.
            for (address, h) in self.homes.drain() {
                if let Some((started, closed_at_start)) = h.episode {
                    log_end(
                        &address,
                        &h.state.displaced,
                        now,
                        started,
                        closed_at_start,
                        h.state.displaced.count(),
                        "fail-back settings changed by a reload; settle starts again",
                    );
                }
            }
            self.policy = Some(policy);
        }
        let (policy, delay) = policy;
        // Homes gone from the set (discovery or reload): never failed back to.
        self.homes.retain(|address, h| {
            let kept = snap
                .upstreams
                .iter()
                .any(|u| Arc::ptr_eq(&u.state, &h.state));
            if kept && !h.state.displaced.is_retired() {
                return true;
            }
            let set = h.state.displaced.clone();
            let count = set.count();
            h.schedule.remove(now, count, |e| {
                on_event(address, &set, &mut h.episode, delay, e)
            });
            false
        });
        for u in &snap.upstreams {
            let set = &u.state.displaced;
            let count = set.count();
            let address = u.config.address.as_str();
            let h = match self.homes.get_mut(address) {
                Some(h) => h,
                None if count == 0 || set.is_retired() => continue,
                None => self
                    .homes
                    .entry(address.to_string())
                    .or_insert_with(|| Home {
                        state: u.state.clone(),
                        schedule: HomeSchedule::new(&policy, delay),
                        entered: set.entered(),
                        episode: None,
                    }),
            };
            let usable = !u.draining && u.state.is_usable(u.policy, now);
            let mut ev = |e| on_event(address, set, &mut h.episode, delay, e);
            let entered = set.entered();
            if entered != h.entered {
                // Displaced since the last tick: home failed that connect.
                h.entered = entered;
                h.schedule.set_usable(false, now, count, &mut ev);
            }
            h.schedule.set_usable(usable, now, count, &mut ev);
            if !usable {
                set.revoke();
            }
            if h.schedule.poll(now, count, &mut ev).close {
                set.grant_one();
            }
            if count == 0 && h.episode.is_none() {
                self.homes.remove(address);
            }
        }
    }
}

fn on_event(
    address: &str,
    set: &DisplacedSet,
    episode: &mut Option<(u64, u64)>,
    delay: Duration,
    e: Event,
) {
    match e {
        Event::Started { at_ms, displaced } => {
            *episode = Some((at_ms, set.closed()));
            tracing::info!(
                home = address,
                displaced,
                delay_ms = delay.as_millis() as u64,
                "fail-back episode started: home usable for settle plus this node's delay; closing its displaced connections at the bounded rate so they reconnect home"
            );
        }
        Event::Ended {
            at_ms,
            remaining,
            reason,
            ..
        } => {
            if let Some((started, closed_at_start)) = episode.take() {
                let why = match reason {
                    EndReason::Done => "no displaced connection left",
                    EndReason::HomeUnusable => {
                        "home unusable again; the remaining connections stay where they are"
                    }
                    EndReason::HomeRemoved => {
                        "home removed from the upstream set; the remaining connections are no longer displaced"
                    }
                };
                log_end(
                    address,
                    set,
                    at_ms,
                    started,
                    closed_at_start,
                    remaining,
                    why,
                );
            }
        }
    }
}

/// The episode's end line: closes counted from the tickets actually taken.
fn log_end(
    address: &str,
    set: &DisplacedSet,
    now: u64,
    started: u64,
    closed_at_start: u64,
    remaining: u64,
    why: &str,
) {
    tracing::info!(
        home = address,
        closed = set.closed().saturating_sub(closed_at_start),
        remaining,
        seconds = now.saturating_sub(started) as f64 / 1000.0,
        reason = why,
        "fail-back episode ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failback::registry::DisplacedGuard;
    use crate::snapshot::Snapshot;
    use crate::upstream::StateTable;

    /// Two upstreams, resolved; the driver's view of time is tokio's
    /// (paused in these tests).
    fn shared(failback: &str) -> (Shared, StateTable) {
        let metrics = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let mut table = StateTable::default();
        let snapshot = snapshot(failback, &mut table, &metrics);
        let shared = Shared::new(snapshot, table.timers(), metrics, Vec::new(), None);
        (shared, table)
    }

    fn snapshot(
        failback: &str,
        table: &mut StateTable,
        metrics: &crate::metrics::Metrics,
    ) -> Snapshot {
        let yaml = format!(
            "hash:\n  node_id: n1\nfailback:\n{failback}upstreams:\n  - address: 10.0.0.1:6443\n  - address: 10.0.0.2:6443\n"
        );
        let config = crate::Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let s = Snapshot::build(&config, table, metrics).unwrap().snapshot;
        for u in &s.upstreams {
            u.state.set_addrs(vec![u.config.address.parse().unwrap()]);
        }
        s
    }

    /// Ticks every 100 ms for `ms`; each granted ticket is taken by one
    /// connection, which then ends. Returns the close times (clock ms).
    async fn run(
        d: &mut Driver,
        shared: &Shared,
        conns: &mut Vec<DisplacedGuard>,
        ms: u64,
    ) -> Vec<u64> {
        let mut closes = Vec::new();
        for _ in 0..ms / 100 {
            tokio::time::advance(TICK).await;
            d.tick(shared);
            if conns.first().is_some_and(|g| g.take_ticket()) {
                closes.push(shared.clock.now_ms());
                conns.remove(0);
            }
        }
        closes
    }

    fn home(shared: &Shared) -> Arc<UpstreamState> {
        shared.snapshot.load().upstreams[0].state.clone()
    }

    const FB: &str = "  settle: 1s\n  spread: 0s\n  max_per_second: 2\n";

    #[tokio::test(start_paused = true)]
    async fn closes_after_settle_at_the_rate_and_ends() {
        let (shared, _table) = shared(FB);
        let h = home(&shared);
        h.set_active(false, shared.clock.now_ms(), "down");
        let mut conns: Vec<_> = (0..4)
            .map(|_| DisplacedGuard::enter(&h.displaced).unwrap())
            .collect();
        let mut d = Driver::default();
        assert!(run(&mut d, &shared, &mut conns, 3000).await.is_empty());
        let t0 = shared.clock.now_ms();
        h.set_active(true, t0, "up");
        let closes = run(&mut d, &shared, &mut conns, 4000).await;
        let rel: Vec<u64> = closes.iter().map(|c| c - t0).collect();
        // Seen usable at the next tick (+100), settle 1 s, then every 500 ms.
        assert_eq!(rel, [1100, 1600, 2100, 2600]);
        assert!(
            d.homes.is_empty(),
            "the episode ended and its home was dropped"
        );
        assert_eq!(h.displaced.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_displaced_connection_or_a_fall_restarts_settle() {
        let (shared, _table) = shared(FB);
        let h = home(&shared);
        let mut conns = vec![DisplacedGuard::enter(&h.displaced).unwrap()];
        let mut d = Driver::default();
        let t0 = shared.clock.now_ms();
        // Home "usable" all along, but another connection is displaced at
        // 800 ms: home failed it, so settle counts from there.
        assert!(run(&mut d, &shared, &mut conns, 800).await.is_empty());
        conns.push(DisplacedGuard::enter(&h.displaced).unwrap());
        let closes = run(&mut d, &shared, &mut conns, 1500).await;
        assert_eq!(closes.first().map(|c| c - t0), Some(1900));
        // Mid-episode, home falls: the rest stay, for as long as it is down.
        h.set_active(false, shared.clock.now_ms(), "down");
        conns.push(DisplacedGuard::enter(&h.displaced).unwrap());
        h.displaced.grant(1); // a ticket the fall must revoke
        tokio::time::advance(TICK).await;
        d.tick(&shared);
        assert!(!conns[0].take_ticket(), "revoked when home fell");
        assert!(run(&mut d, &shared, &mut conns, 5000).await.is_empty());
        assert_eq!(h.displaced.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_or_reloaded_policy() {
        let (shared, mut table) = shared("  enabled: false\n  settle: 0s\n  spread: 0s\n");
        let h = home(&shared);
        let mut conns = vec![DisplacedGuard::enter(&h.displaced).unwrap()];
        let mut d = Driver::default();
        assert!(run(&mut d, &shared, &mut conns, 3000).await.is_empty());
        // A reload turns it on: settle (1 s) counts from the reload.
        let t0 = shared.clock.now_ms();
        shared
            .snapshot
            .store(Arc::new(snapshot(FB, &mut table, &shared.metrics)));
        let closes = run(&mut d, &shared, &mut conns, 2000).await;
        assert_eq!(closes.iter().map(|c| c - t0).collect::<Vec<_>>(), [1100]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_home_is_forgotten() {
        let (shared, mut table) = shared(FB);
        let h = home(&shared);
        let mut conns = vec![DisplacedGuard::enter(&h.displaced).unwrap()];
        let mut d = Driver::default();
        run(&mut d, &shared, &mut conns, 200).await;
        assert_eq!(d.homes.len(), 1);
        // The reload path: the new set without it, then its set retired.
        let yaml = "hash:\n  node_id: n1\nupstreams:\n  - address: 10.0.0.2:6443\n";
        let config = crate::Config::parse(yaml, std::path::Path::new("t.yaml")).unwrap();
        let built = Snapshot::build(&config, &mut table, &shared.metrics).unwrap();
        shared.snapshot.store(Arc::new(built.snapshot));
        for gone in &built.removed {
            gone.displaced.retire();
        }
        assert!(run(&mut d, &shared, &mut conns, 3000).await.is_empty());
        assert!(d.homes.is_empty());
        assert_eq!(h.displaced.count(), 0);
    }
}
