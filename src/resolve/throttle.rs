//! The per-upstream log throttle of name resolution: pure code, time is
//! passed in. It lives in the upstream's state (so it outlives reloads);
//! only the resolver uses it.

use std::time::Duration;

use tokio::time::Instant;

/// How often a name that keeps failing is reported again.
pub(crate) const REPEAT_WARNING: Duration = Duration::from_secs(300);

/// What to log about one resolution attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    Nothing,
    /// The first failure after success (or at start-up).
    StartedFailing,
    /// Still failing, `REPEAT_WARNING` after the previous warning.
    StillFailing {
        /// Failed attempts since the previous warning.
        failures: u64,
        since: Duration,
    },
    Resolved {
        /// Failed attempts in the whole episode.
        failures: u64,
        after: Duration,
    },
}

/// Per-upstream log throttle; time is passed in.
#[derive(Debug, Default)]
pub struct ResolveLog {
    /// Start of the failing episode, and the time of its last warning.
    failing: Option<(Instant, Instant)>,
    since_warning: u64,
    total: u64,
}

impl ResolveLog {
    pub(crate) fn failed(&mut self, now: Instant) -> Report {
        self.total += 1;
        let Some((start, warned)) = self.failing else {
            self.failing = Some((now, now));
            self.since_warning = 0;
            return Report::StartedFailing;
        };
        self.since_warning += 1;
        if now.saturating_duration_since(warned) < REPEAT_WARNING {
            return Report::Nothing;
        }
        self.failing = Some((start, now));
        let failures = std::mem::take(&mut self.since_warning);
        Report::StillFailing {
            failures,
            since: now.saturating_duration_since(start),
        }
    }

    pub(crate) fn resolved(&mut self, now: Instant) -> Report {
        let Some((start, _)) = self.failing.take() else {
            return Report::Nothing;
        };
        let failures = std::mem::take(&mut self.total);
        self.since_warning = 0;
        Report::Resolved {
            failures,
            after: now.saturating_duration_since(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_on_the_transition_then_every_few_minutes_with_a_count() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut log = ResolveLog::default();
        assert_eq!(
            log.resolved(at(0)),
            Report::Nothing,
            "resolving at start is not news"
        );
        assert_eq!(log.failed(at(0)), Report::StartedFailing);
        // Retries every 30 s: quiet until five minutes after the warning.
        let mut said = vec![];
        for s in (30..=660).step_by(30) {
            match log.failed(at(s)) {
                Report::Nothing => {}
                r => said.push((s, r)),
            }
        }
        let five = REPEAT_WARNING.as_secs();
        assert_eq!(
            said,
            [
                (
                    five,
                    Report::StillFailing {
                        failures: 10,
                        since: Duration::from_secs(five)
                    }
                ),
                (
                    2 * five,
                    Report::StillFailing {
                        failures: 10,
                        since: Duration::from_secs(2 * five)
                    }
                ),
            ]
        );
        assert_eq!(
            log.resolved(at(700)),
            Report::Resolved {
                failures: 23,
                after: Duration::from_secs(700)
            }
        );
        assert_eq!(log.resolved(at(710)), Report::Nothing, "once");
        // A new episode warns again at once.
        assert_eq!(log.failed(at(720)), Report::StartedFailing);
        assert_eq!(log.failed(at(721)), Report::Nothing);
    }
}
