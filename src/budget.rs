//! The hedging budget: hedges must not double the load on a cluster whose
//! masters are all slow. In the manner of Envoy's retry budgets, a hedge
//! may start while the hedges started in the last `WINDOW` are fewer than
//! `SHARE` of the connection attempts of the same window, and never fewer
//! than `FLOOR` (so a node with little traffic can still hedge away from a
//! frozen master). Past it, a connection keeps waiting on its first choice.
//!
//! One-second buckets of atomics: a connection attempt is one atomic add,
//! a hedge (rare: a first flight went unanswered) reads the window under a
//! lock, so racing hedges never take more than the budget.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// The window hedges are counted over.
const WINDOW_SECS: u64 = 10;
/// Hedges allowed per connection attempt within the window: 10%.
const SHARE_DIVISOR: u64 = 10;
/// Hedges always allowed within the window.
const FLOOR: u64 = 3;

#[derive(Default)]
pub(crate) struct HedgeBudget {
    attempts: Window,
    hedges: Window,
    /// Serialises hedge decisions (never taken per connection).
    deciding: std::sync::Mutex<()>,
}

impl HedgeBudget {
    /// Counts a new connection attempt at `now_ms` (`Clock` ms).
    pub(crate) fn attempt(&self, now_ms: u64) {
        self.attempts.add(now_ms / 1000);
    }

    /// Takes a hedge from the budget at `now_ms`; false when it is spent.
    pub(crate) fn try_hedge(&self, now_ms: u64) -> bool {
        let sec = now_ms / 1000;
        let _deciding = self.deciding.lock().unwrap_or_else(|e| e.into_inner());
        let allowed = (self.attempts.sum(sec) / SHARE_DIVISOR).max(FLOOR);
        if self.hedges.sum(sec) >= allowed {
            return false;
        }
        self.hedges.add(sec);
        true
    }
}

/// Counts per second over the last `WINDOW_SECS` seconds. Each bucket
/// holds its second in the high 32 bits and its count in the low ones, so
/// a bucket from an older second is recognised and restarted.
#[derive(Default)]
struct Window {
    buckets: [AtomicU64; WINDOW_SECS as usize],
}

const COUNT_MASK: u64 = u32::MAX as u64;

impl Window {
    fn add(&self, sec: u64) {
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let tag = (sec & COUNT_MASK) << 32;
        let mut cur = b.load(Acquire);
        loop {
            let next = if cur & !COUNT_MASK == tag {
                // A u32 count per second cannot wrap in practice; saturate.
                tag | ((cur & COUNT_MASK) + 1).min(COUNT_MASK)
            } else {
                tag | 1
            };
            match b.compare_exchange_weak(cur, next, AcqRel, Acquire) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The count of the window ending at second `sec`.
    fn sum(&self, sec: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Acquire))
            .filter(|v| {
                let at = v >> 32;
                let now = sec & COUNT_MASK;
                // Within the window, allowing for the tag's wrap.
                now.wrapping_sub(at) & COUNT_MASK < WINDOW_SECS
            })
            .map(|v| v & COUNT_MASK)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hedges_are_always_allowed() {
        let b = HedgeBudget::default();
        assert!((0..3).all(|_| b.try_hedge(500)));
        assert!(!b.try_hedge(500), "a fourth without any traffic");
    }

    #[test]
    fn a_tenth_of_the_attempts_of_the_window() {
        let b = HedgeBudget::default();
        for _ in 0..100 {
            b.attempt(1_000);
        }
        let granted = (0..50).filter(|_| b.try_hedge(1_500)).count();
        assert_eq!(granted, 10);
    }

    /// Attempts and hedges older than the window no longer count.
    #[test]
    fn the_window_slides() {
        let b = HedgeBudget::default();
        for _ in 0..100 {
            b.attempt(0);
        }
        assert_eq!((0..50).filter(|_| b.try_hedge(0)).count(), 10);
        // 9.9 s later: still the same window.
        assert!(!b.try_hedge(9_900));
        // 10 s later the old second has left the window: only the floor.
        assert_eq!((0..50).filter(|_| b.try_hedge(10_000)).count(), 3);
        // A bucket reused for a later second starts again.
        for _ in 0..40 {
            b.attempt(20_000);
        }
        assert_eq!((0..50).filter(|_| b.try_hedge(20_000)).count(), 4);
    }

    #[test]
    fn concurrent_attempts_are_all_counted() {
        let b = std::sync::Arc::new(HedgeBudget::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        b.attempt(3_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.attempts.sum(3_000 / 1000), 40_000);
    }
}
