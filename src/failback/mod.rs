//! Fail-back (issue 12): bringing displaced connections home at a bounded
//! rate, staggered across the nodes of a cluster. Pure code, no clock and
//! no I/O; the proxy and `cplb simulate` drive it with their own time.
//!
//! - [`config`]: `failback:` (serde, then validated bounds).
//! - home and placement (here): a key's home is the first upstream on its
//!   ring walk, whatever its health; a connection elsewhere is displaced.
//! - [`schedule`]: per node and home, when to close which and how fast.
//! - [`registry`]: per-upstream counters and the per-connection record,
//!   lock-free, for the proxy.
//! - [`driver`]: the task that runs one `HomeSchedule` per home upstream
//!   on the proxy's clock and turns its steps into close tickets.

pub mod config;
pub(crate) mod driver;
pub(crate) mod registry;
pub(crate) mod schedule;

pub use config::{Failback, FailbackError};
pub(crate) use schedule::{EndReason, Event, HomeSchedule, node_delay};

#[cfg(any(test, feature = "tools"))]
use crate::ring::Ring;

/// The home of a key: the first upstream on its ring walk, usable or not.
/// For `key: node` that is the node's master; for `key: connection` and
/// `key: remote_addr`, the first choice for that key.
// `cplb simulate` runs the policy on its own clock (the proxy knows home
// from its connect walk, `choice`).
#[cfg(any(test, feature = "tools"))]
pub(crate) fn home(ring: &Ring, key_hash: u32) -> Option<usize> {
    ring.first(key_hash)
}

/// Where a new connection, established to ring index `chosen`, stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Home,
    /// Established elsewhere because home was unusable at connect time.
    Displaced {
        home: usize,
    },
}

// `cplb simulate` runs the policy on its own clock (the proxy knows home
// from its connect walk, `choice`).
#[cfg(any(test, feature = "tools"))]
pub(crate) fn placement(ring: &Ring, key_hash: u32, chosen: usize) -> Placement {
    placed(home(ring, key_hash), chosen)
}

/// `placement` for a caller that already walked the ring and knows home
/// (the proxy: its connect walk starts there).
pub(crate) fn placed(home: Option<usize>, chosen: usize) -> Placement {
    match home {
        Some(h) if h != chosen => Placement::Displaced { home: h },
        _ => Placement::Home,
    }
}

/// After the upstream set changes (discovery or reload), what an open
/// connection is. `old_home_kept`: its recorded home is still in the set;
/// `new_home` and `current` are indices in the new ring.
///
/// A removed home displaces nothing (issue 12: never make things worse).
/// Otherwise home is recomputed on the new ring: a connection whose key now
/// belongs to an added upstream is displaced towards it, so a new master
/// fills at the fail-back rate instead of only through churn.
// `cplb simulate` runs the policy on its own clock (the proxy knows home
// from its connect walk, `choice`).
#[cfg(any(test, feature = "tools"))]
pub(crate) fn rehome(old_home_kept: bool, new_home: Option<usize>, current: usize) -> Placement {
    match new_home {
        Some(h) if old_home_kept && h != current => Placement::Displaced { home: h },
        _ => Placement::Home,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::hash_key;

    fn ring() -> Ring {
        Ring::new([
            ("10.0.0.11:6443", 1),
            ("10.0.0.12:6443", 1),
            ("10.0.0.13:6443", 1),
        ])
        .unwrap()
    }

    #[test]
    fn home_is_first_on_the_walk() {
        let r = ring();
        for i in 0..200 {
            let h = hash_key(format!("node-{i}").as_bytes());
            assert_eq!(home(&r, h), r.walk(h).next());
        }
        assert_eq!(home(&Ring::empty(), 1), None);
    }

    #[test]
    fn placement_compares_with_home() {
        let r = ring();
        let h = hash_key(b"node-1");
        let walk: Vec<usize> = r.walk(h).collect();
        assert_eq!(placement(&r, h, walk[0]), Placement::Home);
        assert_eq!(
            placement(&r, h, walk[1]),
            Placement::Displaced { home: walk[0] }
        );
    }

    #[test]
    fn removed_home_displaces_nothing_added_home_does() {
        // Home removed: stays put even though the new home differs.
        assert_eq!(rehome(false, Some(2), 1), Placement::Home);
        // Home kept, key now belongs to an added upstream: displaced.
        assert_eq!(rehome(true, Some(3), 1), Placement::Displaced { home: 3 });
        assert_eq!(rehome(true, Some(1), 1), Placement::Home);
        assert_eq!(rehome(true, None, 1), Placement::Home);
    }
}
