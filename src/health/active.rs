//! Active health: the verdict of the probes (see `probe`), through rise/fall
//! hysteresis, and the latest probe's result for `cplb status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

/// rise/fall: consecutive results needed to flip the active state, so one
/// lost probe flips nothing. Pure code; the state it flips is the caller's
/// (`ActiveHealth::up`), passed in, so there is no second copy to resync.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hysteresis {
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    /// Records one probe result against the current state `up`; returns
    /// the new state if it flipped.
    pub(super) fn record(&mut self, up: bool, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !up && self.successes >= rise {
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if up && self.failures >= fall {
                return Some(false);
            }
        }
        None
    }
}

/// The result of the latest active probe.
#[derive(Debug, Clone)]
pub(crate) struct ProbeResult {
    /// `Clock` milliseconds.
    pub at_ms: u64,
    pub ok: bool,
    /// Why it failed; `None` when it passed.
    pub error: Option<String>,
}

/// The active health check's verdict, written by the prober task. The
/// rise/fall counters live here (not in the prober) so that a prober
/// restarted by a reload keeps its progress.
#[derive(Debug)]
pub struct ActiveHealth {
    /// The verdict: the one copy, read on the proxy's path.
    up: AtomicBool,
    since: AtomicU64,
    /// The rise/fall counters; the verdict they count towards is `up`.
    hysteresis: Mutex<Hysteresis>,
    /// Written by the prober once per probe, read by the admin endpoint.
    last: ArcSwapOption<ProbeResult>,
    /// While draining: the `Clock` millisecond at which its open connections
    /// close; 0 when not draining. Kept here, not in the prober, so a prober
    /// restarted by a reload keeps the deadline.
    drain_until: AtomicU64,
}

impl Default for ActiveHealth {
    // Optimistic at start, like HAProxy: traffic flows before the first probe.
    fn default() -> Self {
        ActiveHealth {
            up: AtomicBool::new(true),
            since: AtomicU64::new(0),
            hysteresis: Mutex::new(Hysteresis::default()),
            last: ArcSwapOption::empty(),
            drain_until: AtomicU64::new(0),
        }
    }
}

impl ActiveHealth {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Acquire)
    }

    pub(crate) fn since_ms(&self) -> u64 {
        self.since.load(Relaxed)
    }

    /// Feeds one probe result through rise/fall; the new state if it
    /// flipped. Only the prober calls this, once per interval: the lock is
    /// never contended and never on the proxy's path.
    pub(crate) fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut h = self.hysteresis.lock().unwrap_or_else(|p| p.into_inner());
        h.record(self.is_up(), ok, rise, fall)
    }

    /// The latest probe's result; `None` before the first probe or while
    /// active checks are off.
    pub(crate) fn last_result(&self) -> Option<Arc<ProbeResult>> {
        self.last.load_full()
    }

    /// Keeps a probe's result for `cplb status`.
    pub(crate) fn note_result<E: std::fmt::Display>(&self, at_ms: u64, result: &Result<(), E>) {
        self.last.store(Some(Arc::new(ProbeResult {
            at_ms,
            ok: result.is_ok(),
            error: result.as_ref().err().map(ToString::to_string),
        })));
    }

    /// Active checks were turned off: no result is current any more.
    pub(crate) fn clear_result(&self) {
        self.last.store(None);
    }

    /// When a draining upstream's connections close (`Clock` ms); `None`
    /// when it is not draining.
    pub(crate) fn drain_until(&self) -> Option<u64> {
        Some(self.drain_until.load(Acquire)).filter(|&t| t != 0)
    }

    /// Starts (`Some`) or ends (`None`) a drain.
    pub(crate) fn set_drain_until(&self, at_ms: Option<u64>) {
        // 0 means "not draining", so a deadline of 0 becomes 1.
        self.drain_until
            .store(at_ms.map_or(0, |t| t.max(1)), Release);
    }

    /// Returns true if this changed the state.
    pub(crate) fn set(&self, up: bool, now: u64) -> bool {
        if self.up.swap(up, AcqRel) != up {
            self.since.store(now, Release);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ActiveHealth, Hysteresis};

    /// A verdict and its counters, as `ActiveHealth` keeps them.
    struct Checked {
        up: bool,
        h: Hysteresis,
    }

    impl Checked {
        fn new(up: bool) -> Checked {
            Checked {
                up,
                h: Hysteresis::default(),
            }
        }

        fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
            let flipped = self.h.record(self.up, ok, rise, fall);
            if let Some(up) = flipped {
                self.up = up;
            }
            flipped
        }
    }

    #[test]
    fn fall_consecutive_failures_mark_down() {
        let mut h = Checked::new(true);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(false, 2, 3), None, "reported once");
    }

    #[test]
    fn one_lost_probe_flips_nothing() {
        let mut h = Checked::new(true);
        for _ in 0..10 {
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(true, 2, 3), None);
        }
        assert!(h.up);
    }

    #[test]
    fn rise_consecutive_successes_mark_up() {
        let mut h = Checked::new(false);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }

    #[test]
    fn the_verdict_is_the_one_in_active_health() {
        let a = ActiveHealth::default();
        assert!(a.is_up(), "optimistic at start");
        assert!(a.set(false, 5), "set from outside the counters");
        // rise counts towards the verdict in `up`: nothing to resync.
        assert_eq!(a.record(true, 1, 1), Some(true));
        assert_eq!(a.since_ms(), 5);
    }
}
