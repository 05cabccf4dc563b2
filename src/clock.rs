//! The one clock of a running proxy: milliseconds since start-up on tokio's
//! clock for health state, and the one place that reads wall-clock Unix
//! time (for metrics, `/status` and display).

/// Milliseconds on tokio's clock since start-up: what health state stores.
/// Monotonic, so a wall-clock step never marks an upstream down or up.
pub(crate) struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            base: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        millis(self.base.elapsed())
    }

    /// Converts a `now_ms` value back to wall-clock Unix seconds, for display.
    pub(crate) fn to_unix_secs(&self, ms: u64) -> f64 {
        let ago = self.now_ms().saturating_sub(ms) as f64 / 1000.0;
        Clock::unix_now() - ago
    }

    /// Wall-clock Unix time in seconds; 0 if the system clock is before 1970.
    pub(crate) fn unix_now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Whole milliseconds, saturating at `u64::MAX` instead of truncating.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `start + after`, or a point decades away when that would overflow:
/// `Instant + Duration` panics, and a config built in code (or an old one)
/// may carry any duration.
pub(crate) fn deadline(
    start: tokio::time::Instant,
    after: std::time::Duration,
) -> tokio::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    start
        .checked_add(after)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn deadline_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            super::deadline(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        let far = super::deadline(now, Duration::MAX);
        assert!(
            far > now + Duration::from_secs(365 * 86_400),
            "{:?}",
            far - now
        );
        let from_far = super::deadline(far, Duration::MAX);
        assert!(from_far >= far);
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(super::millis(Duration::from_millis(1500)), 1500);
        assert_eq!(super::millis(Duration::MAX), u64::MAX);
        // Truncation would wrap this one to a small number.
        assert_eq!(
            super::millis(Duration::from_secs(u64::MAX / 1000 + 1)),
            u64::MAX
        );
    }
}
