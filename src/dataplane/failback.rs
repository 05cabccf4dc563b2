//! Fail-back for rewritten connections: a connection the programs sent
//! away from its home (home unusable at its connect) is closed once home
//! has been usable for `settle` plus this node's delay, at
//! `max_per_second` per home, with the proxy's schedule
//! (`failback::HomeSchedule`) and its metric label (`closed_failback` on
//! the upstream the connection ran on). The client reconnects, and the
//! programs send it home.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::tables::Built;
use crate::failback::{EndReason, Event, Failback, HomeSchedule};
use crate::kernel::{Filter, Plane};
use crate::logfmt::Chain;
use crate::snapshot::Snapshot;

/// Reading the rewritten set costs two system calls per connection: when
/// no episode runs, it is read this often only.
const SCAN_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct KernelFailback {
    homes: HashMap<SocketAddr, HomeSchedule>,
    policy: Option<(Failback, Duration)>,
    scanned_at: Option<Instant>,
}

impl KernelFailback {
    /// One look at `now_ms` (`Clock`): at most one close per home. Blocking.
    pub(super) fn tick(&mut self, plane: &Plane, built: &Built, snap: &Snapshot, now_ms: u64) {
        let policy = (snap.settings.failback, snap.settings.failback_delay);
        if self.policy != Some(policy) {
            // Start-up, or a reload changed `failback`: settle counts again.
            self.homes.clear();
            self.policy = Some(policy);
        }
        let (policy, delay) = policy;
        if !policy.enabled {
            return;
        }
        let busy = !self.homes.is_empty();
        if !busy && self.scanned_at.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
            return;
        }
        self.scanned_at = Some(Instant::now());
        let Ok(conns) = plane.connections() else {
            return;
        };
        // Home -> the masters its displaced connections run on.
        let mut away: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        for c in conns.iter().filter(|c| c.established && c.displaced()) {
            if let Some(home) = c.home {
                away.entry(home).or_default().push(c.backend);
            }
        }
        let ran_on = |addr: SocketAddr| {
            let b = built.tables.backends.iter().position(|b| b.addr == addr)?;
            snap.upstreams.get(*built.upstream_of.get(b)?)
        };
        self.homes
            .retain(|home, _| built.tables.backends.iter().any(|b| b.addr == *home));
        for b in &built.tables.backends {
            let on = away.get(&b.addr).map_or(&[][..], Vec::as_slice);
            let count = on.len() as u64;
            let h = match self.homes.get_mut(&b.addr) {
                Some(h) => h,
                None if count == 0 => continue,
                None => self
                    .homes
                    .entry(b.addr)
                    .or_insert_with(|| HomeSchedule::new(&policy, delay)),
            };
            let mut ev = |e| log(b.addr, delay, e);
            h.set_usable(b.usable, now_ms, count, &mut ev);
            if h.poll(now_ms, count, &mut ev).close
                && let Some(&current) = on.first()
            {
                let one = Filter::displaced().home(b.addr).at_most(1);
                match plane.destroy_to(current, one) {
                    Ok(n) => {
                        if let Some(up) = ran_on(current) {
                            up.state.metrics.closed_failback.inc_by(n as u64);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(home = %b.addr, upstream = %current, error = %Chain(&e), "fail-back could not close a rewritten connection")
                    }
                }
            }
            if count == 0 && !h.in_episode() {
                self.homes.remove(&b.addr);
            }
        }
    }
}

fn log(home: SocketAddr, delay: Duration, e: Event) {
    match e {
        Event::Started { displaced, .. } => tracing::info!(
            home = %home,
            displaced,
            delay_ms = delay.as_millis() as u64,
            "fail-back episode started for rewritten connections: closing those displaced from home at the bounded rate so they reconnect home"
        ),
        Event::Ended {
            remaining, reason, ..
        } => {
            let why = match reason {
                EndReason::Done => "no displaced connection left",
                EndReason::HomeUnusable => {
                    "home unusable again; the remaining connections stay where they are"
                }
                EndReason::HomeRemoved => "home removed from the upstream set",
            };
            tracing::info!(home = %home, remaining, reason = why, "fail-back episode for rewritten connections ended");
        }
    }
}
