//! A copy's idleness, in as few bytes as it can take: every open connection
//! holds one. No timer: the connection waits on the wheel (`crate::wheel`)
//! until `due_ms`, and on each wake-up looks here whether it has been idle
//! too long, or long enough to give its upstream socket keepalive.

use std::time::Duration;

use crate::clock::millis;

use super::sockopt::KEEPALIVE_AFTER;

/// Idle bookkeeping: 16 bytes where a tokio `Sleep` took 112.
pub(super) struct Idle {
    /// When a byte last moved (`Clock` ms).
    last_ms: u64,
    /// The timeout in hundredths of a second, rounded up: a `u32` holds
    /// 497 days, over the config's bound of 365, and the wheel's tick is
    /// never finer than 10 ms anyway.
    timeout_cs: u32,
    /// The upstream socket has keepalive.
    keepalive: bool,
}

/// What a look at idleness found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Active,
    /// Idle for `KEEPALIVE_AFTER`, for the first time: arm keepalive now.
    ArmKeepalive,
    /// Idle for the timeout: close.
    Expired,
}

const _: () = assert!(365 * 86_400 * 100 <= u32::MAX as u64);

impl Idle {
    pub(super) fn new(timeout: Duration, now_ms: u64) -> Idle {
        let cs = millis(timeout).div_ceil(10);
        Idle {
            last_ms: now_ms,
            timeout_cs: u32::try_from(cs).unwrap_or(u32::MAX),
            keepalive: false,
        }
    }

    /// A byte moved at `now_ms`.
    pub(super) fn touch(&mut self, now_ms: u64) {
        self.last_ms = now_ms;
    }

    fn timeout_ms(&self) -> u64 {
        u64::from(self.timeout_cs) * 10
    }

    /// When `check` next has something to do (`Clock` ms): keepalive,
    /// then the timeout, counted from the last activity seen so far.
    pub(super) fn due_ms(&self) -> u64 {
        let timeout = self.timeout_ms();
        let after = if self.keepalive {
            timeout
        } else {
            timeout.min(millis(KEEPALIVE_AFTER))
        };
        self.last_ms.saturating_add(after)
    }

    /// Looks at idleness at `now_ms`. Keepalive waits for the first idle
    /// spell of `KEEPALIVE_AFTER`: a connection that is over first (one
    /// kubectl request, a health probe) never pays its four setsockopt
    /// calls, and a busy one needs no probe while bytes flow.
    pub(super) fn check(&mut self, now_ms: u64) -> Verdict {
        let idle = now_ms.saturating_sub(self.last_ms);
        if idle >= self.timeout_ms() {
            Verdict::Expired
        } else if !self.keepalive && idle >= millis(KEEPALIVE_AFTER) {
            self.keepalive = true;
            Verdict::ArmKeepalive
        } else {
            Verdict::Active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    /// The timeout counts from the last activity, not from the start.
    #[test]
    fn expires_a_timeout_after_the_last_activity() {
        let mut idle = Idle::new(Duration::from_secs(10), 100 * S);
        idle.touch(107 * S);
        assert_ne!(idle.check(116 * S), Verdict::Expired);
        assert_eq!(idle.check(117 * S - 1), Verdict::Active);
        assert_eq!(idle.check(117 * S), Verdict::Expired);
    }

    /// The next wake-up: keepalive's, then the timeout's, from the last
    /// activity.
    #[test]
    fn due_is_keepalive_then_the_timeout() {
        let mut idle = Idle::new(Duration::from_secs(600), 0);
        idle.touch(2 * S);
        assert_eq!(idle.due_ms(), 2 * S + millis(KEEPALIVE_AFTER));
        assert_eq!(idle.check(idle.due_ms()), Verdict::ArmKeepalive);
        assert_eq!(idle.due_ms(), 602 * S);
        let short = Idle::new(Duration::from_secs(1), 0);
        assert_eq!(short.due_ms(), S);
    }

    /// Keepalive is armed once, after the first idle spell long enough.
    #[test]
    fn keepalive_waits_for_an_idle_spell_and_is_armed_once() {
        let mut idle = Idle::new(Duration::from_secs(600), 0);
        let after = millis(KEEPALIVE_AFTER);
        assert_eq!(idle.check(after - 1), Verdict::Active);
        idle.touch(after - 1);
        assert_eq!(idle.check(after + 1), Verdict::Active, "busy, not idle");
        assert_eq!(idle.check(2 * after - 1), Verdict::ArmKeepalive);
        assert_eq!(idle.check(3 * after), Verdict::Active, "armed once");
    }

    /// Sub-10 ms parts round up (never early); the bound and beyond fit.
    #[test]
    fn timeouts_round_up_and_huge_ones_do_not_overflow() {
        let mut idle = Idle::new(Duration::from_millis(1_001), 0);
        assert_eq!(idle.check(1_009), Verdict::Active);
        assert_eq!(idle.check(1_010), Verdict::Expired);
        let mut year = Idle::new(Duration::from_secs(365 * 86_400), 0);
        assert_ne!(year.check(364 * 86_400 * S), Verdict::Expired);
        assert_eq!(year.check(365 * 86_400 * S), Verdict::Expired);
        let mut max = Idle::new(Duration::MAX, 0);
        assert_ne!(max.check(400 * 86_400 * S), Verdict::Expired);
    }
}
