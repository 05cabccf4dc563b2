//! The watcher's pacing, as pure state machines (times are passed in):
//! when a changed list is published (after a quiet time, but never later
//! than a maximum wait after the first unpublished change), and how long
//! to wait before listing again after a 410 Gone (exponential with
//! jitter, bounded, reset by a working watch).

use std::time::Duration;

use tokio::time::Instant;

/// Debounce with a maximum wait: a joining API server adds and removes
/// itself several times (the quiet time absorbs that), but a Service that
/// changes every half second must still be published now and then.
#[derive(Debug)]
pub(crate) struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    /// The first change not yet published.
    first: Option<Instant>,
    due: Option<Instant>,
}

impl Debounce {
    pub(crate) fn new(quiet: Duration, max_wait: Duration) -> Debounce {
        Debounce {
            quiet,
            max_wait,
            first: None,
            due: None,
        }
    }

    /// A change at `now`: due once `quiet` passes without another, and
    /// at the latest `max_wait` after the first unpublished change.
    pub(crate) fn changed(&mut self, now: Instant) {
        let first = *self.first.get_or_insert(now);
        let quiet = crate::clock::deadline(now, self.quiet);
        self.due = Some(quiet.min(crate::clock::deadline(first, self.max_wait)));
    }

    /// When to publish; `None`: nothing to publish.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Takes the pending change, if any: true when there is one to publish.
    pub(crate) fn take(&mut self) -> bool {
        self.first = None;
        self.due.take().is_some()
    }
}

/// Waits before listing again after 410 Gone. An API that answers every
/// watch with 410 would otherwise be listed as fast as it answers (22
/// times a second, measured), from every node at once.
#[derive(Debug)]
pub(crate) struct GoneBackoff {
    min: Duration,
    max: Duration,
    /// 410s in a row, without a working watch in between.
    streak: u32,
    last: Option<Instant>,
}

impl GoneBackoff {
    pub(crate) fn new(min: Duration, max: Duration) -> GoneBackoff {
        GoneBackoff {
            min,
            max,
            streak: 0,
            last: None,
        }
    }

    /// A 410 at `now`: the wait before the next list, `min` doubled for
    /// each 410 of the streak up to `max`, times a jitter factor in
    /// [0.5, 1) from `unit` (uniform in [0, 1)) so that nodes spread out.
    /// A streak ends with a watch event (`reset`) or when the last 410 is
    /// more than three times `max` ago: the watch worked in between.
    pub(crate) fn gone(&mut self, now: Instant, unit: f64) -> Duration {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) > self.max.saturating_mul(3))
        {
            self.streak = 0;
        }
        self.last = Some(now);
        let wait = self
            .min
            .saturating_mul(1u32 << self.streak.min(16))
            .min(self.max);
        self.streak = self.streak.saturating_add(1);
        jitter(wait, unit)
    }

    /// The watch delivered an event: the next 410 starts a new streak.
    pub(crate) fn reset(&mut self) {
        self.streak = 0;
        self.last = None;
    }
}

/// `d` times a factor in [0.5, 1) taken from `unit` in [0, 1).
pub(crate) fn jitter(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_time_publishes_but_constant_change_waits_at_most_max_wait() {
        let t0 = Instant::now();
        let mut d = Debounce::new(1000 * MS, 3000 * MS);
        assert_eq!(d.due(), None);
        d.changed(t0);
        assert_eq!(d.due(), Some(t0 + 1000 * MS));
        // A change every 500 ms: the quiet time moves, the maximum does not.
        for i in 1..=5 {
            d.changed(t0 + 500 * i * MS);
        }
        assert_eq!(d.due(), Some(t0 + 3000 * MS));
        assert!(d.take());
        assert!(!d.take(), "taken once");
        // The next change starts its own maximum wait.
        d.changed(t0 + 3100 * MS);
        assert_eq!(d.due(), Some(t0 + 4100 * MS));
    }

    #[test]
    fn gone_backs_off_exponentially_with_jitter_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = GoneBackoff::new(200 * MS, 10_000 * MS);
        let mut now = t0;
        let mut top = Vec::new();
        for _ in 0..9 {
            let w = b.gone(now, 0.999_999);
            top.push(w.as_millis());
            now += w;
        }
        assert_eq!(top, [199, 399, 799, 1599, 3199, 6399, 9999, 9999, 9999]);
        let low = b.gone(now, 0.0);
        assert_eq!(low, 5000 * MS, "the jitter takes at most half");
        b.reset();
        assert_eq!(b.gone(now, 0.0), 100 * MS, "a working watch resets");
        assert_eq!(b.gone(now, 0.0), 200 * MS);
        // Longer than three times the cap without a 410: a new streak.
        assert_eq!(b.gone(now + 30_001 * MS, 0.0), 100 * MS);
    }
}
