//! The fail-back scheduler for one home upstream on one node: pure and
//! deterministic, with time passed in as milliseconds on any monotonic
//! clock. The proxy (or `cplb simulate`) tells it when home turns usable or
//! unusable and polls it with the current number of connections displaced
//! from that home; it answers whether to close one now and when to poll
//! next.
//!
//! Rules, each with a unit test below:
//! 1. Nothing moves until home has been usable continuously for `settle`,
//!    plus this node's delay in `[0, spread)` (`node_delay`).
//! 2. Then at most `max_per_second` closes in any one-second window: closes
//!    are spaced at least `ceil(1000 / max_per_second)` ms apart (a token
//!    bucket of depth one; a late poll never releases a burst).
//! 3. Home turning unusable ends the episode: the rest stay where they are,
//!    and the settle time starts again once home is back.
//! 4. A removed home ends the episode for good; those connections are not
//!    displaced any more.
//! 5. Episode start and end are reported as `Event`s, for one log line each.

use std::time::Duration;

use super::config::Failback;
use crate::ring;

/// This node's start delay in `[0, spread)`: crc32 of the node id (the
/// ring's hash), mixed with murmur3's finaliser so that sequential names
/// (`node-1`, `node-2`, ...) spread as evenly as random ones, then scaled.
pub(crate) fn node_delay(node_id: &str, spread: Duration) -> Duration {
    let mut h = ring::hash_key(node_id.as_bytes());
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    let spread_ms = spread.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(((h as u128 * spread_ms as u128) >> 32) as u64)
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// No displaced connection is left.
    Done,
    /// Home turned unusable; the rest stay where they are.
    HomeUnusable,
    /// Home was removed (discovery or reload); the rest are not displaced.
    HomeRemoved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Started {
        at_ms: u64,
        displaced: u64,
    },
    Ended {
        at_ms: u64,
        closed: u64,
        remaining: u64,
        reason: EndReason,
    },
}

/// What a poll asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Step {
    /// Close one displaced connection now.
    pub close: bool,
    /// Poll again at this time; `None`: only when something changes (home
    /// usable/unusable, or the displaced count goes from 0 to more).
    pub wake_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    /// Earliest time of the next close (the bucket's theoretical arrival).
    next_ms: u64,
    closed: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct HomeSchedule {
    enabled: bool,
    settle_ms: u64,
    delay_ms: u64,
    interval_ms: u64,
    usable_since: Option<u64>,
    removed: bool,
    episode: Option<Episode>,
}

impl HomeSchedule {
    /// `delay` is this node's `node_delay`. Home starts unusable: the
    /// first `set_usable(true, ..)` starts the settle time.
    pub(crate) fn new(policy: &Failback, delay: Duration) -> HomeSchedule {
        let rate = u64::from(policy.max_per_second.max(1));
        HomeSchedule {
            enabled: policy.enabled,
            settle_ms: policy.settle.as_millis() as u64,
            delay_ms: delay.as_millis() as u64,
            interval_ms: 1000u64.div_ceil(rate),
            usable_since: None,
            removed: false,
            episode: None,
        }
    }

    /// Home's usability changed (or is confirmed; repeats are harmless).
    /// Returns when to poll next.
    pub(crate) fn set_usable(
        &mut self,
        usable: bool,
        now_ms: u64,
        displaced: u64,
        mut on_event: impl FnMut(Event),
    ) -> Option<u64> {
        if self.removed {
            return None;
        }
        if usable {
            if self.usable_since.is_none() {
                self.usable_since = Some(now_ms);
            }
            return self.due_ms().filter(|_| self.enabled);
        }
        self.usable_since = None;
        self.end(now_ms, displaced, EndReason::HomeUnusable, &mut on_event);
        None
    }

    /// Home was removed from the upstream set: this schedule is inert for
    /// good (a home that comes back is a new upstream with a new schedule).
    pub(crate) fn remove(&mut self, now_ms: u64, displaced: u64, mut on_event: impl FnMut(Event)) {
        self.end(now_ms, displaced, EndReason::HomeRemoved, &mut on_event);
        self.removed = true;
        self.usable_since = None;
    }

    /// `displaced`: connections currently displaced from this home.
    pub(crate) fn poll(
        &mut self,
        now_ms: u64,
        displaced: u64,
        mut on_event: impl FnMut(Event),
    ) -> Step {
        let (Some(due), true, false) = (self.due_ms(), self.enabled, self.removed) else {
            return Step::default();
        };
        if now_ms < due {
            return Step {
                close: false,
                wake_ms: Some(due),
            };
        }
        if displaced == 0 {
            self.end(now_ms, 0, EndReason::Done, &mut on_event);
            return Step::default();
        }
        let ep = self.episode.get_or_insert_with(|| {
            on_event(Event::Started {
                at_ms: now_ms,
                displaced,
            });
            Episode {
                next_ms: now_ms,
                closed: 0,
            }
        });
        if now_ms < ep.next_ms {
            return Step {
                close: false,
                wake_ms: Some(ep.next_ms),
            };
        }
        // Spacing from the later of the planned time and now, so a late
        // poll cannot catch up in a burst.
        ep.next_ms = ep.next_ms.max(now_ms) + self.interval_ms;
        ep.closed += 1;
        Step {
            close: true,
            wake_ms: Some(ep.next_ms),
        }
    }

    /// An episode (closing at the rate) is under way.
    pub(crate) fn in_episode(&self) -> bool {
        self.episode.is_some()
    }

    fn due_ms(&self) -> Option<u64> {
        self.usable_since.map(|s| {
            s.saturating_add(self.settle_ms)
                .saturating_add(self.delay_ms)
        })
    }

    fn end(&mut self, now_ms: u64, displaced: u64, reason: EndReason, on_event: impl FnMut(Event)) {
        let mut on_event = on_event;
        if let Some(ep) = self.episode.take() {
            on_event(Event::Ended {
                at_ms: now_ms,
                closed: ep.closed,
                remaining: displaced,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn policy(rate: u64) -> Failback {
        Failback::new(
            true,
            Duration::from_secs(30),
            Duration::from_secs(120),
            rate,
        )
        .unwrap()
    }

    /// Home usable at 0, delay 7 s: episode due at 37 s.
    fn sched(rate: u64) -> HomeSchedule {
        let mut s = HomeSchedule::new(&policy(rate), Duration::from_secs(7));
        assert_eq!(s.set_usable(true, 0, 10, |_| {}), Some(37 * S));
        s
    }

    fn no_events(e: Event) {
        panic!("unexpected event {e:?}");
    }

    #[test]
    fn nothing_before_settle_plus_delay() {
        let mut s = sched(2);
        for t in (0..37 * S).step_by(100) {
            let step = s.poll(t, 10, no_events);
            assert!(!step.close, "closed at {t} ms");
            assert_eq!(step.wake_ms, Some(37 * S));
        }
        let mut events = Vec::new();
        let step = s.poll(37 * S, 10, |e| events.push(e));
        assert!(step.close);
        assert_eq!(
            events,
            [Event::Started {
                at_ms: 37 * S,
                displaced: 10
            }]
        );
    }

    #[test]
    fn delay_is_in_spread_and_spreads_evenly() {
        let spread = Duration::from_secs(120);
        let mut buckets = [0u32; 120];
        for i in 0..12_000 {
            let d = node_delay(&format!("node-{i}"), spread);
            assert!(d < spread);
            buckets[d.as_secs() as usize] += 1;
        }
        // 100 per one-second bucket on average.
        let max = *buckets.iter().max().unwrap();
        let min = *buckets.iter().min().unwrap();
        assert!(max <= 140 && min >= 60, "min {min} max {max}");
        assert_eq!(node_delay("a", Duration::ZERO), Duration::ZERO);
        assert_eq!(node_delay("node-7", spread), node_delay("node-7", spread));
    }

    #[test]
    fn at_most_rate_in_any_second_even_when_polled_often() {
        for rate in [1u64, 2, 3, 7, 1000] {
            let mut s = sched(rate);
            let mut closes = Vec::new();
            for t in 37 * S..57 * S {
                if s.poll(t, 1_000_000, |_| {}).close {
                    closes.push(t);
                }
            }
            for (i, &t) in closes.iter().enumerate() {
                let in_window = closes[i..].iter().take_while(|&&u| u < t + S).count();
                assert!(
                    in_window as u64 <= rate,
                    "rate {rate}: {in_window} from {t}"
                );
            }
            // ...and the rate is actually used (within rounding of 1000/rate).
            let want = (20 * S).div_ceil(1000u64.div_ceil(rate));
            assert_eq!(closes.len() as u64, want, "rate {rate}");
        }
    }

    #[test]
    fn late_poll_releases_one_not_a_burst() {
        let mut s = sched(2);
        assert!(s.poll(37 * S, 10, |_| {}).close);
        // Ten seconds without a poll: one close, then the spacing again.
        let step = s.poll(47 * S, 9, |_| {});
        assert!(step.close);
        assert_eq!(step.wake_ms, Some(47 * S + 500));
        assert!(!s.poll(47 * S + 499, 8, |_| {}).close);
        assert!(s.poll(47 * S + 500, 8, |_| {}).close);
    }

    #[test]
    fn home_unusable_ends_episode_and_restarts_settle() {
        let mut s = sched(2);
        assert!(s.poll(37 * S, 10, |_| {}).close);
        let mut events = Vec::new();
        assert_eq!(s.set_usable(false, 38 * S, 9, |e| events.push(e)), None);
        assert_eq!(
            events,
            [Event::Ended {
                at_ms: 38 * S,
                closed: 1,
                remaining: 9,
                reason: EndReason::HomeUnusable
            }]
        );
        // While unusable nothing is closed, however long it lasts.
        for t in (38 * S..200 * S).step_by(250) {
            assert_eq!(s.poll(t, 9, no_events), Step::default());
        }
        // Back at 200 s: settle and delay count from there.
        assert_eq!(s.set_usable(true, 200 * S, 9, no_events), Some(237 * S));
        assert!(!s.poll(236 * S, 9, no_events).close);
        assert!(s.poll(237 * S, 9, |_| {}).close);
    }

    #[test]
    fn flapping_home_moves_nothing() {
        let mut s = HomeSchedule::new(&policy(2), Duration::from_secs(7));
        // Up 20 s, down 20 s, for an hour: never 37 s of continuous use.
        for cycle in 0..90u64 {
            let up = cycle * 40 * S;
            s.set_usable(true, up, 10, no_events);
            for t in (up..up + 20 * S).step_by(100) {
                assert!(!s.poll(t, 10, no_events).close, "closed at {t}");
            }
            s.set_usable(false, up + 20 * S, 10, no_events);
        }
        // Repeated "usable" reports do not reset the settle time.
        s.set_usable(true, 4000 * S, 10, no_events);
        s.set_usable(true, 4030 * S, 10, no_events);
        assert!(s.poll(4037 * S, 10, |_| {}).close);
    }

    #[test]
    fn removed_home_is_never_failed_back_to() {
        let mut s = sched(2);
        assert!(s.poll(37 * S, 10, |_| {}).close);
        let mut events = Vec::new();
        s.remove(38 * S, 9, |e| events.push(e));
        assert!(matches!(
            events[..],
            [Event::Ended {
                reason: EndReason::HomeRemoved,
                closed: 1,
                remaining: 9,
                ..
            }]
        ));
        assert_eq!(s.set_usable(true, 39 * S, 9, no_events), None);
        for t in (38 * S..500 * S).step_by(500) {
            assert_eq!(s.poll(t, 9, no_events), Step::default());
        }
    }

    #[test]
    fn disabled_never_closes() {
        let mut p = policy(2);
        p.enabled = false;
        let mut s = HomeSchedule::new(&p, Duration::ZERO);
        assert_eq!(s.set_usable(true, 0, 10, no_events), None);
        for t in (0..600 * S).step_by(100) {
            assert_eq!(s.poll(t, 10, no_events), Step::default());
        }
    }

    #[test]
    fn episode_needs_displaced_and_ends_when_none_left() {
        let mut s = sched(2);
        // Nothing displaced when due: no episode, nothing to wake for.
        assert_eq!(s.poll(37 * S, 0, no_events), Step::default());
        // One shows up later (home still usable): it starts at once.
        let mut events = Vec::new();
        assert!(s.poll(50 * S, 2, |e| events.push(e)).close);
        assert!(s.poll(50 * S + 500, 1, |e| events.push(e)).close);
        let step = s.poll(51 * S, 0, |e| events.push(e));
        assert_eq!(step, Step::default());
        assert_eq!(
            events,
            [
                Event::Started {
                    at_ms: 50 * S,
                    displaced: 2
                },
                Event::Ended {
                    at_ms: 51 * S,
                    closed: 2,
                    remaining: 0,
                    reason: EndReason::Done
                }
            ]
        );
    }
}
