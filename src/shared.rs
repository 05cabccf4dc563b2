//! State shared by every task of one running proxy.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

pub struct Shared {
    /// The one published view of the upstream set; see `snapshot`.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Client connections open now, for `max_connections`.
    pub clients: AtomicUsize,
    /// Inside a last-resort episode (every upstream unusable); logged once.
    pub all_down: AtomicBool,
    /// Inside an accept-failure episode (e.g. out of descriptors), across
    /// all listeners, and when the last failure was (`Clock` ms).
    pub accept_failing: AtomicBool,
    pub accept_failed_at: AtomicU64,
    /// Set once shutdown has begun: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Cancelled when the drain grace is over: open connections close.
    pub force_close: CancellationToken,
    /// `listen` addresses not bound because the node has no IPv6 (see
    /// `listener::skippable`); named in `/readyz`.
    pub skipped_listen: Vec<crate::listener::Skipped>,
    /// The last config load and its result, for `/status`.
    pub last_load: ArcSwap<crate::status::LoadRecord>,
}

/// Milliseconds on tokio's clock since start-up: what health state stores.
/// tokio's clock, so tests can pause and advance it.
pub struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Converts a `now_ms` value back to wall-clock Unix seconds, for display.
    pub fn to_unix_secs(&self, ms: u64) -> f64 {
        let ago = self.now_ms().saturating_sub(ms) as f64 / 1000.0;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        now - ago
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
