//! The ketama ring, built exactly as nginx's `hash ... consistent` builds it
//! (ngx_stream_upstream_hash_module.c), so `hash.key: remote_addr` picks the
//! same server as nginx for every client. Pure code: no I/O, no tokio.
//!
//! Build: for each server, `base = crc32(host "\0" port)` over the literal
//! address text; then `weight * 160` points, each
//! `crc32(base ++ le_bytes(previous point))` with the first previous point 0.
//! Points are sorted by hash (stably, so the first-listed server wins a
//! collision, as glibc's merge-sort qsort does for nginx) and duplicate hash
//! values are dropped. Lookup: the first point >= crc32(key), wrapping.

/// Servers a ring can hold; `Walk` tracks visited servers in one `u128`.
pub const MAX_SERVERS: usize = 128;
const POINTS_PER_WEIGHT: u32 = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    hash: u32,
    server: u32,
}

/// More servers than a ring holds. Config validation refuses such a list
/// and discovery caps its set, so this is the last line of defence: a
/// caller gets an error to report instead of a panic in its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{given} servers, a ring holds at most {MAX_SERVERS}")]
pub struct TooManyServers {
    /// How many were given (counting stops at `MAX_SERVERS + 1`).
    pub given: usize,
}

#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<Point>,
    servers: usize,
}

/// crc32 (IEEE, as zlib and nginx's `ngx_crc32_long`) of a lookup key.
pub fn hash_key(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

/// nginx splits the literal server text at the last ':' that is followed
/// only by digits; without such a port the whole text is the host.
fn split_for_hash(addr: &str) -> (&str, &str) {
    let bytes = addr.as_bytes();
    for j in 0..bytes.len() {
        let c = bytes[bytes.len() - j - 1];
        if c == b':' {
            let host_len = bytes.len() - j - 1;
            return (&addr[..host_len], &addr[host_len + 1..]);
        }
        if !c.is_ascii_digit() {
            break;
        }
    }
    (addr, "")
}

impl Ring {
    /// A ring without servers: every lookup yields nothing.
    pub fn empty() -> Ring {
        Ring {
            points: Vec::new(),
            servers: 0,
        }
    }

    /// Builds the ring from `(literal address, weight)` pairs; a server's
    /// index in the input is its index in lookups. More than
    /// `MAX_SERVERS` servers is an error (found before any point of the
    /// excess is computed).
    pub fn new<'a, I>(servers: I) -> Result<Ring, TooManyServers>
    where
        I: IntoIterator<Item = (&'a str, u32)>,
    {
        let mut points = Vec::new();
        let mut count = 0usize;
        for (index, (addr, weight)) in servers.into_iter().enumerate() {
            count += 1;
            if count > MAX_SERVERS {
                return Err(TooManyServers { given: count });
            }
            let (host, port) = split_for_hash(addr);
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(b"\0");
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..weight.saturating_mul(POINTS_PER_WEIGHT) {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push(Point {
                    hash,
                    server: index as u32,
                });
                prev = hash;
            }
        }
        points.sort_by_key(|p| p.hash); // stable
        points.dedup_by_key(|p| p.hash); // keeps the first of each run
        Ok(Ring {
            points,
            servers: count,
        })
    }

    #[cfg(test)]
    fn points(&self) -> usize {
        self.points.len()
    }

    /// Index of the first point whose hash is >= `hash`, wrapping to 0.
    fn start(&self, hash: u32) -> usize {
        let i = self.points.partition_point(|p| p.hash < hash);
        if i == self.points.len() { 0 } else { i }
    }

    /// The server nginx would choose for this key hash when all are usable.
    pub fn first(&self, hash: u32) -> Option<usize> {
        self.walk(hash).next()
    }

    /// Every server once, in ring order starting at `hash`: the failover
    /// order. Unlike nginx, which gives up after 20 points and falls back to
    /// round robin, this skips points of servers already visited.
    pub fn walk(&self, hash: u32) -> Walk<'_> {
        Walk {
            ring: self,
            next: if self.points.is_empty() {
                0
            } else {
                self.start(hash)
            },
            stepped: 0,
            seen: 0,
            found: 0,
        }
    }

    /// Fraction of the 32-bit hash space each server owns: the share of
    /// uniformly spread keys it receives.
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u64; self.servers];
        let n = self.points.len();
        for (i, p) in self.points.iter().enumerate() {
            // Point i owns the keys in (previous point, point i].
            let prev = if i == 0 {
                self.points[n - 1].hash as u64
            } else {
                self.points[i - 1].hash as u64
            };
            let span = if i == 0 {
                (1u64 << 32) - prev + p.hash as u64
            } else {
                p.hash as u64 - prev
            };
            owned[p.server as usize] += span;
        }
        owned
            .iter()
            .map(|&o| o as f64 / (1u64 << 32) as f64)
            .collect()
    }
}

/// Iterator over distinct servers in ring order; see `Ring::walk`.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    ring: &'a Ring,
    next: usize,
    stepped: usize,
    seen: u128,
    found: usize,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let points = &self.ring.points;
        while self.found < self.ring.servers && self.stepped < points.len() {
            let server = points[self.next].server as usize;
            self.next = (self.next + 1) % points.len();
            self.stepped += 1;
            let bit = 1u128 << server;
            if self.seen & bit == 0 {
                self.seen |= bit;
                self.found += 1;
                return Some(server);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Ring {
        Ring::new([
            ("server1.k8s.local:6443", 5),
            ("server2.k8s.local:6443", 5),
            ("server3.k8s.local:6443", 5),
        ])
        .unwrap()
    }

    #[test]
    fn split_like_nginx() {
        assert_eq!(split_for_hash("a.b:6443"), ("a.b", "6443"));
        assert_eq!(split_for_hash("[::1]:6443"), ("[::1]", "6443"));
        assert_eq!(split_for_hash("a.b"), ("a.b", ""));
        assert_eq!(split_for_hash("a:b"), ("a:b", ""));
    }

    #[test]
    fn point_chain_matches_hand_computed_crc() {
        // Recompute the first two points of server1 by hand, independently
        // of the Hasher-cloning code above.
        let mut buf = b"server1.k8s.local\x006443".to_vec();
        let base_len = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        let p0 = crc32fast::hash(&buf);
        buf.truncate(base_len);
        buf.extend_from_slice(&p0.to_le_bytes());
        let p1 = crc32fast::hash(&buf);
        let ring = Ring::new([("server1.k8s.local:6443", 1)]).unwrap();
        let hashes: Vec<u32> = ring.points.iter().map(|p| p.hash).collect();
        assert!(hashes.contains(&p0) && hashes.contains(&p1));
        assert_eq!(ring.points(), 160);
    }

    #[test]
    fn reference_setup_sends_loopback_to_server3() {
        // Measured with real nginx 1.22 (shared/reference): every client
        // from 127.0.0.1 lands on server3, and on server2 once it is down.
        let ring = reference();
        let order: Vec<usize> = ring.walk(hash_key(b"127.0.0.1")).collect();
        assert_eq!(order[0], 2);
        assert_eq!(order[1], 1);
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn walk_visits_each_server_once() {
        let ring = reference();
        for key in 0..1000u32 {
            let mut v: Vec<usize> = ring.walk(key.wrapping_mul(2654435761)).collect();
            v.sort();
            assert_eq!(v, vec![0, 1, 2]);
        }
    }

    #[test]
    fn points_sorted_unique_and_counted() {
        let ring = Ring::new([("a:1", 1), ("b:1", 3)]).unwrap();
        assert!(ring.points.windows(2).all(|w| w[0].hash < w[1].hash));
        assert!(ring.points() <= 4 * 160 && ring.points() >= 4 * 160 - 2);
    }

    #[test]
    fn shares_sum_to_one_and_follow_weight() {
        let ring = Ring::new([("a:1", 1), ("b:1", 3)]).unwrap();
        let s = ring.shares();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(s[1] > 2.0 * s[0], "{s:?}");
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let full = Ring::new([("a:1", 5), ("b:1", 5), ("c:1", 5)]).unwrap();
        let less = Ring::new([("a:1", 5), ("c:1", 5)]).unwrap();
        let map = [0usize, 2]; // index in `less` -> index in `full`
        let mut moved = 0;
        for i in 0..20_000u32 {
            let h = hash_key(format!("node-{i}").as_bytes());
            let before = full.first(h).unwrap();
            let after = map[less.first(h).unwrap()];
            if before != 1 {
                assert_eq!(before, after, "key {i} moved although its server stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn key_hash_is_zlib_crc32() {
        // The CRC-32/ISO-HDLC check value, the one zlib and nginx compute.
        assert_eq!(hash_key(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn lookup_starts_at_the_first_point_at_or_above_the_hash() {
        let ring = reference();
        let n = ring.points.len();
        for (i, p) in ring.points.iter().enumerate() {
            // A hash equal to a point's belongs to that point ...
            assert_eq!(ring.start(p.hash), i);
            // ... one above it to the next point, wrapping past the last.
            if p.hash < u32::MAX {
                assert_eq!(ring.start(p.hash + 1), (i + 1) % n);
            }
        }
        assert_eq!(ring.start(0), 0);
    }

    #[test]
    fn a_server_without_points_ends_the_walk() {
        // Weight 0 gives a server no points: the walk must still end, after
        // yielding the servers that have points, without indexing past them.
        let ring = Ring::new([("a:1", 0), ("b:1", 1)]).unwrap();
        assert_eq!(ring.walk(7).collect::<Vec<_>>(), vec![1]);
        let none = Ring::new([("a:1", 0)]).unwrap();
        assert_eq!(none.first(7), None);
    }

    #[test]
    fn empty_ring_yields_nothing() {
        let ring = Ring::new(std::iter::empty::<(&str, u32)>()).unwrap();
        assert_eq!(ring.first(5), None);
        assert_eq!(Ring::empty().walk(5).count(), 0);
    }

    #[test]
    fn more_servers_than_a_ring_holds_is_an_error_not_a_panic() {
        let names: Vec<String> = (0..=MAX_SERVERS)
            .map(|i| format!("10.0.{}.{}:6443", i / 250, i % 250))
            .collect();
        let full = Ring::new(names[..MAX_SERVERS].iter().map(|s| (s.as_str(), 1))).unwrap();
        assert_eq!(full.walk(7).count(), MAX_SERVERS);
        let e = Ring::new(names.iter().map(|s| (s.as_str(), 1))).unwrap_err();
        assert_eq!(
            e,
            TooManyServers {
                given: MAX_SERVERS + 1
            }
        );
        assert_eq!(e.to_string(), "129 servers, a ring holds at most 128");
        // Counting stops at the first server too many: an endless list ends.
        let endless = std::iter::repeat(("a:1", 1));
        assert_eq!(Ring::new(endless).unwrap_err().given, MAX_SERVERS + 1);
    }
}
