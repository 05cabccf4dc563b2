//! The displaced-connection registry, in the form the proxy will use:
//! nothing but atomics, no lock and no allocation per connection.
//!
//! Design (to be wired into `proxy::handle`):
//! - One `DisplacedSet` per upstream, beside its `UpstreamState`: the
//!   connections displaced *from* it (it is their home, they run elsewhere).
//! - A connection that `placement` finds displaced takes a `DisplacedGuard`
//!   on its home's set. That guard is the per-connection record: it counts
//!   the connection in (`cplb_connections_displaced{upstream=home}` reads
//!   `count`) and out again when the connection ends, however it ends.
//! - The node's `HomeSchedule` for that home decides *when*; each
//!   `Step::close` becomes one `grant(1)` plus one wake of a
//!   `tokio::sync::Notify` kept beside the set. Displaced connections race
//!   `take_ticket` on wake; the one that wins closes itself
//!   (`cplb_connections_closed_total{reason="failback"}`), the others go on.
//!   So exactly as many close as were granted.
//! - Home unusable again: `revoke` drops tickets not yet taken, so nothing
//!   granted before the turn moves after it.
//! - Home removed by discovery or reload: `retire`; its connections are no
//!   longer displaced (guards become no-ops) and no ticket is ever taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct DisplacedSet {
    count: AtomicU64,
    tickets: AtomicU64,
    retired: AtomicBool,
}

impl DisplacedSet {
    /// Connections currently displaced from this home.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The scheduler asks for `n` more closes.
    pub(crate) fn grant(&self, n: u64) {
        if !self.retired.load(Ordering::Acquire) {
            self.tickets.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Home turned unusable: closes granted but not yet taken are dropped.
    pub(crate) fn revoke(&self) -> u64 {
        self.tickets.swap(0, Ordering::AcqRel)
    }

    /// Home removed: nothing is displaced from it any more.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.tickets.store(0, Ordering::Release);
        self.count.store(0, Ordering::Release);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// A displaced connection asks whether it is the one to go home.
    pub(crate) fn take_ticket(&self) -> bool {
        !self.is_retired() && dec_if_positive(&self.tickets)
    }

    fn leave(&self) {
        dec_if_positive(&self.count);
    }
}

/// Decrements unless zero; never wraps, even racing `retire`'s reset.
fn dec_if_positive(a: &AtomicU64) -> bool {
    a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
        .is_ok()
}

/// The per-connection record: held by a displaced connection's task for
/// its life. Cloning the `Arc` does not allocate.
#[derive(Debug)]
pub(crate) struct DisplacedGuard {
    set: Arc<DisplacedSet>,
}

impl DisplacedGuard {
    /// `None` when home is already retired: such a connection is not
    /// displaced.
    pub(crate) fn enter(set: &Arc<DisplacedSet>) -> Option<DisplacedGuard> {
        if set.is_retired() {
            return None;
        }
        set.count.fetch_add(1, Ordering::AcqRel);
        Some(DisplacedGuard { set: set.clone() })
    }

    /// See `DisplacedSet::take_ticket`.
    pub(crate) fn take_ticket(&self) -> bool {
        self.set.take_ticket()
    }
}

impl Drop for DisplacedGuard {
    fn drop(&mut self) {
        if !self.set.is_retired() {
            self.set.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_in_and_out() {
        let set = Arc::new(DisplacedSet::default());
        let a = DisplacedGuard::enter(&set).unwrap();
        let b = DisplacedGuard::enter(&set).unwrap();
        assert_eq!(set.count(), 2);
        drop(a);
        assert_eq!(set.count(), 1);
        drop(b);
        assert_eq!(set.count(), 0);
    }

    #[test]
    fn exactly_the_granted_number_close_under_contention() {
        let set = Arc::new(DisplacedSet::default());
        let guards: Vec<_> = (0..64)
            .map(|_| DisplacedGuard::enter(&set).unwrap())
            .collect();
        set.grant(5);
        let won: usize = std::thread::scope(|s| {
            let handles: Vec<_> = guards
                .iter()
                .map(|g| s.spawn(move || g.take_ticket()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(won, 5);
        assert!(!guards[0].take_ticket());
    }

    #[test]
    fn revoke_drops_untaken_tickets() {
        let set = Arc::new(DisplacedSet::default());
        let g = DisplacedGuard::enter(&set).unwrap();
        set.grant(3);
        assert!(g.take_ticket());
        assert_eq!(set.revoke(), 2);
        assert!(!g.take_ticket());
    }

    #[test]
    fn retired_home_displaces_nothing() {
        let set = Arc::new(DisplacedSet::default());
        let g = DisplacedGuard::enter(&set).unwrap();
        set.grant(1);
        set.retire();
        assert_eq!(set.count(), 0);
        assert!(!g.take_ticket());
        set.grant(1);
        assert!(!g.take_ticket());
        assert!(DisplacedGuard::enter(&set).is_none());
        drop(g); // no underflow
        assert_eq!(set.count(), 0);
    }

    #[test]
    fn count_never_wraps() {
        let set = DisplacedSet::default();
        set.leave();
        assert_eq!(set.count(), 0);
    }
}
