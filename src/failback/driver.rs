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
