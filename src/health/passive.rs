//! Passive health: nginx's max_fails / fail_timeout as a small state machine
//! over atomics. One instance per upstream, shared by every listener and
//! every config snapshot, so a failure seen anywhere counts everywhere and a
//! reload keeps the state. Pure code: time comes in as milliseconds on the
//! caller's monotonic clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// The per-upstream settings the state machine runs under; they come from
/// the current snapshot, so a reload can change them without losing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// 0 disables failure accounting.
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Usable,
    /// Marked down, but its `fail_timeout` has passed: this caller may try
    /// it. Only one caller per `fail_timeout` gets a trial.
    Trial,
    Unusable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    MarkedDown,
    MarkedUp,
}

#[derive(Debug, Default)]
pub struct PassiveHealth {
    fails: AtomicU32,
    window_start: AtomicU64,
    /// 0 while up; otherwise down, and no trial before this time.
    down_until: AtomicU64,
    /// Time of the last transition, for `/upstreams`.
    since: AtomicU64,
}

impl PassiveHealth {
    pub(crate) fn is_down(&self) -> bool {
        self.down_until.load(Relaxed) != 0
    }

    pub(crate) fn since_ms(&self) -> u64 {
        self.since.load(Relaxed)
    }

    /// Failures counted in the current window.
    pub(crate) fn recent_failures(&self) -> u32 {
        self.fails.load(Relaxed)
    }

    /// Whether this upstream may be used now, without side effects.
    pub(crate) fn is_usable(&self, policy: Policy, now: u64) -> bool {
        let until = self.down_until.load(Acquire);
        policy.max_fails == 0 || until == 0 || now >= until
    }

    /// Asks to use this upstream now. Granting a trial pushes the next trial
    /// `fail_timeout` away, so a dead upstream costs one connect per window.
    pub(crate) fn admit(&self, policy: Policy, now: u64) -> Admission {
        if policy.max_fails == 0 {
            return Admission::Usable;
        }
        let until = self.down_until.load(Acquire);
        if until == 0 {
            return Admission::Usable;
        }
        if now < until {
            return Admission::Unusable;
        }
        let next = now.saturating_add(policy.fail_timeout_ms.max(1));
        match self
            .down_until
            .compare_exchange(until, next, AcqRel, Acquire)
        {
            Ok(_) => Admission::Trial,
            Err(_) => Admission::Unusable,
        }
    }

    /// Records a failed connect. Returns `MarkedDown` on the failure that
    /// reaches `max_fails` within `fail_timeout`.
    pub(crate) fn on_failure(&self, policy: Policy, now: u64) -> Option<Transition> {
        if policy.max_fails == 0 {
            return None;
        }
        let window = self.window_start.load(Acquire);
        let fails = if self.fails.load(Acquire) == 0
            || now.saturating_sub(window) > policy.fail_timeout_ms
        {
            self.window_start.store(now, Release);
            self.fails.store(1, Release);
            1
        } else {
            self.fails.fetch_add(1, AcqRel) + 1
        };
        let next = now.saturating_add(policy.fail_timeout_ms.max(1));
        if self.down_until.load(Acquire) != 0 {
            // A failed trial: stay down for another window, no new transition.
            self.down_until.fetch_max(next, AcqRel);
            return None;
        }
        if fails >= policy.max_fails
            && self
                .down_until
                .compare_exchange(0, next, AcqRel, Acquire)
                .is_ok()
        {
            self.since.store(now, Release);
            return Some(Transition::MarkedDown);
        }
        None
    }

    /// Records a successful connect; brings a down upstream back up.
    pub(crate) fn on_success(&self, now: u64) -> Option<Transition> {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Release);
        }
        if self.down_until.load(Relaxed) != 0 && self.down_until.swap(0, AcqRel) != 0 {
            self.since.store(now, Release);
            return Some(Transition::MarkedUp);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max_fails: 2,
        fail_timeout_ms: 3000,
    };

    #[test]
    fn recent_failures_counts_the_window() {
        let h = PassiveHealth::default();
        assert_eq!(h.recent_failures(), 0);
        h.on_failure(P, 0);
        h.on_failure(P, 10);
        assert_eq!(h.recent_failures(), 2);
    }

    #[test]
    fn usable_follows_the_mark_and_its_timeout() {
        let h = PassiveHealth::default();
        assert!(h.is_usable(P, 0), "a fresh upstream is usable");
        h.on_failure(P, 0);
        h.on_failure(P, 1);
        assert!(!h.is_usable(P, 2), "marked down within fail_timeout");
        assert!(
            h.is_usable(P, 1 + 3000),
            "usable again once fail_timeout passed"
        );
        let off = Policy { max_fails: 0, ..P };
        assert!(h.is_usable(off, 2), "max_fails 0 ignores the mark");
    }

    #[test]
    fn a_failure_exactly_fail_timeout_later_is_in_the_same_window() {
        // nginx: a failure at most fail_timeout after the window opened counts.
        let h = PassiveHealth::default();
        assert_eq!(h.on_failure(P, 0), None);
        assert_eq!(h.on_failure(P, 3000), Some(Transition::MarkedDown));
    }

    #[test]
    fn max_fails_within_window_marks_down() {
        let h = PassiveHealth::default();
        assert_eq!(h.on_failure(P, 100), None);
        assert_eq!(h.on_failure(P, 200), Some(Transition::MarkedDown));
        assert!(h.is_down());
        assert_eq!(h.admit(P, 300), Admission::Unusable);
        assert!(!h.is_usable(P, 3199));
    }

    #[test]
    fn failures_spread_beyond_window_do_not_mark() {
        let h = PassiveHealth::default();
        assert_eq!(h.on_failure(P, 0), None);
        assert_eq!(h.on_failure(P, 5000), None);
        assert!(!h.is_down());
        assert_eq!(h.on_failure(P, 5100), Some(Transition::MarkedDown));
    }

    #[test]
    fn one_trial_per_window_then_success_marks_up() {
        let h = PassiveHealth::default();
        h.on_failure(P, 0);
        h.on_failure(P, 0);
        assert_eq!(h.admit(P, 3000), Admission::Trial);
        assert_eq!(
            h.admit(P, 3001),
            Admission::Unusable,
            "second caller gets no trial"
        );
        assert_eq!(h.on_success(3050), Some(Transition::MarkedUp));
        assert_eq!(h.admit(P, 3051), Admission::Usable);
        assert_eq!(h.since_ms(), 3050);
    }

    #[test]
    fn failed_trial_stays_down_silently() {
        let h = PassiveHealth::default();
        h.on_failure(P, 0);
        h.on_failure(P, 0);
        assert_eq!(h.admit(P, 3000), Admission::Trial);
        assert_eq!(h.on_failure(P, 3100), None);
        assert_eq!(h.admit(P, 4000), Admission::Unusable);
        assert_eq!(h.admit(P, 6100), Admission::Trial);
    }

    #[test]
    fn success_resets_the_count() {
        let h = PassiveHealth::default();
        h.on_failure(P, 0);
        assert_eq!(h.on_success(1), None);
        assert_eq!(h.on_failure(P, 2), None);
        assert!(!h.is_down());
    }

    #[test]
    fn max_fails_zero_disables_accounting() {
        let p = Policy {
            max_fails: 0,
            fail_timeout_ms: 1000,
        };
        let h = PassiveHealth::default();
        for t in 0..10 {
            assert_eq!(h.on_failure(p, t), None);
        }
        assert_eq!(h.admit(p, 10), Admission::Usable);
    }

    #[test]
    fn huge_fail_timeout_saturates() {
        let p = Policy {
            max_fails: 1,
            fail_timeout_ms: u64::MAX,
        };
        let h = PassiveHealth::default();
        assert_eq!(h.on_failure(p, 5), Some(Transition::MarkedDown));
        assert_eq!(h.admit(p, u64::MAX - 1), Admission::Unusable);
        assert_eq!(h.admit(p, u64::MAX), Admission::Trial);
        assert_eq!(h.on_failure(p, u64::MAX), None, "failed trial");
        assert!(h.is_down());
    }

    #[test]
    fn concurrent_failures_report_one_transition() {
        use std::sync::Arc;
        let h = Arc::new(PassiveHealth::default());
        let p = Policy {
            max_fails: 1,
            fail_timeout_ms: 1000,
        };
        let downs: usize = (0..8)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || h.on_failure(p, 10).is_some() as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(downs, 1);
    }
}
