//! The displaced-connection registry the proxy uses: nothing but atomics
//! and one `Notify`, no lock and no allocation per connection.
//!
//! Wiring (`proxy::handle`, `failback::driver`):
//! - One `DisplacedSet` per upstream, in its `UpstreamState` (so it
//!   survives reloads, like health): the connections displaced *from* it
//!   (it is their home, they run elsewhere).
//! - A connection that `placement` finds displaced takes a `DisplacedGuard`
//!   on its home's set. That guard is the per-connection record: it counts
//!   the connection in (`cplb_connections_displaced{upstream=home}` reads
//!   `count`) and out again when the connection ends, however it ends.
//! - The node's `HomeSchedule` for that home decides *when*; each
//!   `Step::close` becomes one `grant_one` (untaken tickets dropped, then
//!   one granted, then one `Notify::notify_one` of the set's `wake`).
//!   Displaced connections wait on `wake` and race `take_ticket`; the one
//!   that wins closes itself
//!   (`cplb_connections_closed_total{reason="failback"}`), the others wait
//!   again. So at most as many close as were granted, and never more than
//!   one ticket is open at a time.
//! - Home unusable again: `revoke` drops tickets not yet taken, so nothing
//!   granted before the turn moves after it.
//! - Home removed by discovery or reload: `retire`; its connections are no
//!   longer displaced (guards become no-ops) and no ticket is ever taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct DisplacedSet {
    count: AtomicU64,
    tickets: AtomicU64,
    retired: AtomicBool,
    /// Connections ever displaced from this home: a new one since the
    /// driver's last look means home failed a connect in between.
    entered: AtomicU64,
    /// Tickets taken (connections closed to go home), ever.
    closed: AtomicU64,
    /// Woken once per granted ticket; displaced connections wait on it.
    wake: Notify,
}

impl DisplacedSet {
    /// Connections currently displaced from this home.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Connections ever displaced from this home.
    pub(crate) fn entered(&self) -> u64 {
        self.entered.load(Ordering::Acquire)
    }

    /// Connections ever closed by a ticket (sent home).
    pub(crate) fn closed(&self) -> u64 {
        self.closed.load(Ordering::Acquire)
    }

    /// One close, as the scheduler asks: a ticket left untaken since the
    /// last grant is dropped first, so tickets never pile up into a burst;
    /// then one waiting connection is woken (or the next one to wait).
    pub(crate) fn grant_one(&self) {
        self.revoke();
        self.grant(1);
        self.wake.notify_one();
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
        let won = !self.is_retired() && dec_if_positive(&self.tickets);
        if won {
            self.closed.fetch_add(1, Ordering::AcqRel);
        }
        won
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
        set.entered.fetch_add(1, Ordering::AcqRel);
        Some(DisplacedGuard { set: set.clone() })
    }

    /// See `DisplacedSet::take_ticket`.
    pub(crate) fn take_ticket(&self) -> bool {
        self.set.take_ticket()
    }

    /// Completes when this connection has won a ticket: it is to close so
    /// that its client reconnects home. Woken once per grant; a loser of
    /// the race (or a wake-up whose ticket was revoked) waits again.
    pub(crate) async fn sent_home(&self) {
        loop {
            self.set.wake.notified().await;
            if self.take_ticket() {
                return;
            }
        }
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
    fn grant_one_never_leaves_more_than_one_ticket() {
        let set = Arc::new(DisplacedSet::default());
        let g = DisplacedGuard::enter(&set).unwrap();
        set.grant_one();
        set.grant_one();
        set.grant_one();
        assert!(g.take_ticket());
        assert!(!g.take_ticket(), "untaken tickets are dropped, not stacked");
        assert_eq!(set.closed(), 1);
        assert_eq!(set.entered(), 1);
    }

    #[tokio::test]
    async fn one_grant_sends_exactly_one_home() {
        let set = Arc::new(DisplacedSet::default());
        let guards: Vec<_> = (0..8)
            .map(|_| Arc::new(DisplacedGuard::enter(&set).unwrap()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for g in &guards {
            let g = g.clone();
            tasks.spawn(async move { g.sent_home().await });
        }
        tokio::task::yield_now().await;
        set.grant_one();
        tasks.join_next().await.unwrap().unwrap();
        // Give the others every chance to (wrongly) finish too.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.len(), 7);
        assert_eq!(set.closed(), 1);
        set.grant_one();
        tasks.join_next().await.unwrap().unwrap();
        assert_eq!(set.closed(), 2);
        tasks.abort_all();
    }

    #[test]
    fn count_never_wraps() {
        let set = DisplacedSet::default();
        set.leave();
        assert_eq!(set.count(), 0);
    }
}
