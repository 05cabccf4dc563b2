//! The choice of a master for a new connection: home, the order of tries,
//! the last resort. One pure function of the ring, the key's hash and a
//! view of each upstream's standing, used by everything that chooses:
//! - the proxy, with real connects (`proxy::setup`), and its hedges, which
//!   take the next candidate of the same walk;
//! - `cplb simulate`, with its model of masters;
//! - the kernel data plane, whose tables are filled from it.
//!
//! No I/O, no clock, no atomics: the caller's view decides how an upstream
//! stands, and is asked lazily, in walk order, once per upstream (the
//! proxy's view grants passive-health trials as a side effect, so asking
//! only when a connect would follow matters).

use crate::ring::{Ring, Walk};

/// How an upstream stands for a new connection, as the caller's view says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// May take it now.
    Usable,
    /// Marked down by a check, or draining: tried only once every usable
    /// one has been (the last resort against false marks).
    LastResort,
    /// Never tried: no address, or the address is cplb's own.
    Never,
}

/// Which pass of the walk a candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Usable, in ring order.
    First,
    /// Every usable one was tried or there was none: the skipped ones, in
    /// ring order.
    LastResort,
}

/// The candidates for one key, in the order to try them, at most `tries`
/// of them: usable upstreams in ring order, then the last-resort ones. The
/// first upstream on the walk, whatever its standing, is the key's home
/// (fail-back's notion).
pub(crate) struct Choice<'a, V> {
    ring: &'a Ring,
    hash: u32,
    view: V,
    walk: Walk<'a>,
    pass: Pass,
    /// Upstreams the first pass skipped as last-resort ones.
    skipped: u128,
    tries: usize,
    yielded: usize,
    home: Option<usize>,
}

impl<'a, V: FnMut(usize) -> Standing> Choice<'a, V> {
    /// `view(i)` gives upstream `i`'s standing; `tries` bounds the
    /// candidates (`next_upstream_tries`).
    pub(crate) fn new(ring: &'a Ring, hash: u32, tries: usize, view: V) -> Choice<'a, V> {
        Choice {
            ring,
            hash,
            view,
            walk: ring.walk(hash),
            pass: Pass::First,
            skipped: 0,
            tries,
            yielded: 0,
            home: None,
        }
    }

    /// The key's home: the first upstream on its walk, usable or not. Known
    /// once `next` has been called (the walk starts there).
    pub(crate) fn home(&self) -> Option<usize> {
        self.home
    }
}

impl<V: FnMut(usize) -> Standing> Iterator for Choice<'_, V> {
    type Item = (usize, Pass);

    fn next(&mut self) -> Option<(usize, Pass)> {
        if self.yielded >= self.tries {
            return None;
        }
        loop {
            let Some(i) = self.walk.next() else {
                if self.pass == Pass::LastResort || self.skipped == 0 {
                    return None;
                }
                self.pass = Pass::LastResort;
                self.walk = self.ring.walk(self.hash);
                continue;
            };
            self.home.get_or_insert(i);
            let found = match self.pass {
                Pass::First => match (self.view)(i) {
                    Standing::Usable => true,
                    Standing::LastResort => {
                        self.skipped |= 1 << i;
                        false
                    }
                    Standing::Never => false,
                },
                Pass::LastResort => self.skipped & (1 << i) != 0,
            };
            if found {
                self.yielded += 1;
                return Some((i, self.pass));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::hash_key;

    fn ring() -> Ring {
        Ring::new([
            ("server1.k8s.local:6443", 5),
            ("server2.k8s.local:6443", 5),
            ("server3.k8s.local:6443", 5),
        ])
        .unwrap()
    }

    fn all(choice: impl Iterator<Item = (usize, Pass)>) -> Vec<(usize, Pass)> {
        choice.collect()
    }

    /// All usable: the ring's own walk, nginx's choice first (the reference
    /// setup sends 127.0.0.1 to server3, then server2).
    #[test]
    fn all_usable_is_the_ring_walk() {
        let r = ring();
        let h = hash_key(b"127.0.0.1");
        let mut c = Choice::new(&r, h, usize::MAX, |_| Standing::Usable);
        assert_eq!(c.home(), None, "home is known once the walk starts");
        let got = all(c.by_ref());
        let walk: Vec<_> = r.walk(h).map(|i| (i, Pass::First)).collect();
        assert_eq!(got, walk);
        assert_eq!(got[0].0, 2);
        assert_eq!(c.home(), Some(2));
    }

    /// A down home is skipped, then tried last; home stays the walk's first.
    #[test]
    fn down_upstreams_come_last() {
        let r = ring();
        let h = hash_key(b"127.0.0.1");
        let mut c = Choice::new(&r, h, usize::MAX, |i| {
            if i == 2 {
                Standing::LastResort
            } else {
                Standing::Usable
            }
        });
        assert_eq!(
            all(c.by_ref()),
            vec![(1, Pass::First), (0, Pass::First), (2, Pass::LastResort)]
        );
        assert_eq!(c.home(), Some(2));
    }

    /// `Never` is never yielded, not even as a last resort (cplb's own
    /// address, an unresolved name).
    #[test]
    fn never_is_never_tried() {
        let r = ring();
        let h = hash_key(b"127.0.0.1");
        let got = all(Choice::new(&r, h, usize::MAX, |i| match i {
            2 => Standing::Never,
            1 => Standing::LastResort,
            _ => Standing::Usable,
        }));
        assert_eq!(got, vec![(0, Pass::First), (1, Pass::LastResort)]);
        let none = all(Choice::new(&r, h, usize::MAX, |_| Standing::Never));
        assert!(none.is_empty());
    }

    /// Every one down: all of them, in ring order, as the last resort.
    #[test]
    fn all_down_is_the_last_resort_in_ring_order() {
        let r = ring();
        let h = hash_key(b"node-7");
        let got = all(Choice::new(&r, h, usize::MAX, |_| Standing::LastResort));
        let walk: Vec<_> = r.walk(h).map(|i| (i, Pass::LastResort)).collect();
        assert_eq!(got, walk);
    }

    /// `tries` bounds both passes together.
    #[test]
    fn tries_bound_the_candidates() {
        let r = ring();
        let h = hash_key(b"127.0.0.1");
        let got = all(Choice::new(&r, h, 2, |i| {
            if i == 1 {
                Standing::LastResort
            } else {
                Standing::Usable
            }
        }));
        assert_eq!(got, vec![(2, Pass::First), (0, Pass::First)]);
        assert!(all(Choice::new(&r, h, 0, |_| Standing::Usable)).is_empty());
    }

    /// The view is asked once per upstream, in walk order, and only as far
    /// as the caller goes (the proxy's view grants trials).
    #[test]
    fn the_view_is_asked_lazily_once_each() {
        let r = ring();
        let h = hash_key(b"127.0.0.1");
        let mut asked = Vec::new();
        let first = Choice::new(&r, h, usize::MAX, |i| {
            asked.push(i);
            Standing::LastResort
        })
        .next();
        assert_eq!(first, Some((2, Pass::LastResort)));
        assert_eq!(asked, r.walk(h).collect::<Vec<_>>());
        let mut asked = Vec::new();
        let first = Choice::new(&r, h, usize::MAX, |i| {
            asked.push(i);
            Standing::Usable
        })
        .next();
        assert_eq!(first, Some((2, Pass::First)));
        assert_eq!(asked, vec![2]);
    }

    /// For every hash key, the first candidate with everything usable is
    /// the ring's first: the seam keeps nginx parity (tests/nginx_parity.rs
    /// checks the ring against a real nginx).
    #[test]
    fn first_candidate_is_the_rings_first_for_every_key() {
        let r = ring();
        for key in ["127.0.0.1", "10.0.0.7", "node-1", "127.0.0.1:41234"] {
            let h = hash_key(key.as_bytes());
            let first = Choice::new(&r, h, usize::MAX, |_| Standing::Usable).next();
            assert_eq!(first.map(|c| c.0), r.first(h), "{key}");
        }
    }
}
