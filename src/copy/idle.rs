//! A copy's idle timer, in as few bytes as it can take: every open
//! connection holds one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::clock::{deadline, millis};

pin_project_lite::pin_project! {
    /// Fires after `timeout` without activity. Re-armed lazily: activity
    /// only records when it happened, and the timer is reset when it fires
    /// early, so a busy connection does not touch the timer wheel per read.
    /// When a byte last moved is kept in milliseconds relative to the
    /// timer's own deadline (which `Sleep` stores anyway): 8 bytes where an
    /// `Instant` takes 16.
    pub(super) struct Idle {
        timeout_ms: u64,
        // When a byte last moved, in ms after (or, negative, before) `sleep`'s
        // deadline.
        last_ms: i64,
        #[pin]
        sleep: Sleep,
    }
}

impl Idle {
    /// First fires after `first` (at most `timeout`), then `timeout` after
    /// the last activity.
    pub(super) fn new(timeout: Duration, first: Duration) -> Idle {
        let first = first.min(timeout);
        Idle {
            timeout_ms: millis(timeout),
            last_ms: -to_i64(millis(first)),
            sleep: tokio::time::sleep(first),
        }
    }

    /// A byte moved now.
    pub(super) fn touch(self: Pin<&mut Self>) {
        let p = self.project();
        *p.last_ms = since(Instant::now(), p.sleep.deadline());
    }

    /// Ready once `timeout` has passed since the last activity. `fired` runs
    /// each time the timer fires, early or not.
    pub(super) fn poll_expired(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut fired: impl FnMut(),
    ) -> Poll<()> {
        let mut p = self.project();
        loop {
            ready!(p.sleep.as_mut().poll(cx));
            fired();
            let armed = p.sleep.deadline();
            let last = at(armed, *p.last_ms);
            let due = deadline(last, Duration::from_millis(*p.timeout_ms));
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            p.sleep.as_mut().reset(due);
            *p.last_ms = since(last, due);
        }
    }
}

/// `t - base` in ms, negative when `t` is earlier (truncated toward zero:
/// an activity seen up to 1 ms late).
fn since(t: Instant, base: Instant) -> i64 {
    if t >= base {
        to_i64(millis(t - base))
    } else {
        -to_i64(millis(base - t))
    }
}

/// `base + ms`, saturating at `base` where an `Instant` cannot go.
fn at(base: Instant, ms: i64) -> Instant {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        deadline(base, d)
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_both_ways() {
        let base = Instant::now();
        for ms in [-5_000i64, -1, 0, 1, 5_000] {
            assert_eq!(since(at(base, ms), base), ms);
        }
    }

    /// The timeout counts from the last activity, not from when the timer
    /// was armed.
    #[tokio::test(start_paused = true)]
    async fn expires_a_timeout_after_the_last_activity() {
        let start = Instant::now();
        let mut idle = std::pin::pin!(Idle::new(Duration::from_secs(10), Duration::from_secs(5)));
        let mut fired = 0;
        tokio::time::sleep(Duration::from_secs(7)).await;
        idle.as_mut().touch();
        std::future::poll_fn(|cx| idle.as_mut().poll_expired(cx, || fired += 1)).await;
        let after = start.elapsed();
        println!("expired after {after:?}, timer fired {fired} times");
        assert_eq!(after, Duration::from_secs(17));
        // Due at 5 s (first polled at 7 s, after the touch: early), then
        // at 17 s.
        assert_eq!(fired, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeouts_do_not_panic() {
        let mut idle = std::pin::pin!(Idle::new(Duration::MAX, Duration::from_secs(5)));
        idle.as_mut().touch();
        let polled = std::future::poll_fn(|cx| Poll::Ready(idle.as_mut().poll_expired(cx, || {})));
        assert!(polled.await.is_pending());
    }
}
