//! What user space tells the kernel to choose from: plain data, with no
//! dependency on the snapshot, so the proxy's one seam for choosing a
//! master can fill it from a snapshot and its health. `slots_from_ring`
//! builds a service's lookup table from the ring.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::maps::{CANDIDATES, MAX_SERVICE_KEYS, MAX_SERVICES, MAX_SLOTS, is_wildcard};
use crate::ring::Ring;

/// Everything the programs choose from. Published whole by
/// `Plane::publish`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub services: Vec<Service>,
    pub backends: Vec<Backend>,
}

/// One listen address and its lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// As configured; a wildcard (`0.0.0.0`, `[::]`) stands for this
    /// host's own addresses (`expand`).
    pub listen: SocketAddr,
    /// Each slot: up to `CANDIDATES` indexes into `Tables::backends` in
    /// ring-walk order; the first is the slot's home. One slot sends the
    /// whole node to one master (hash keys `node`, `remote_addr`); more
    /// spread connects uniformly over the slots (`connection`). Empty:
    /// every connect reaches the proxy (the programs still record who made
    /// it). A listen address left out of `Tables::services` is not looked
    /// at at all.
    pub slots: Vec<Vec<u16>>,
}

/// One master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// nginx's `max_fails`, applied in the kernel; 0 disables it.
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
    /// The active check's verdict (and discovery's: a draining master is
    /// not usable). An unusable candidate is skipped; it stays in the
    /// slots, so a slot keeps its home.
    pub usable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    #[error("{count} listen addresses: the kernel tables hold at most {MAX_SERVICES}")]
    TooManyServices { count: usize },
    #[error("{count} masters: the kernel tables hold at most {max}")]
    TooManyBackends { count: usize, max: usize },
    #[error("listen address {listen}: {count} slots, at most {MAX_SLOTS}")]
    TooManySlots { listen: SocketAddr, count: usize },
    #[error("listen address {listen}, slot {slot}: {count} candidates, at most {CANDIDATES}")]
    TooManyCandidates {
        listen: SocketAddr,
        slot: usize,
        count: usize,
    },
    #[error(
        "listen address {listen}, slot {slot}: master #{index} is not one of the {count} masters"
    )]
    UnknownBackend {
        listen: SocketAddr,
        slot: usize,
        index: u16,
        count: usize,
    },
    #[error("listen address {listen} is listed twice")]
    DuplicateService { listen: SocketAddr },
    #[error("master {addr} is listed twice")]
    DuplicateBackend { addr: SocketAddr },
    #[error(
        "the listen addresses expand to {count} local addresses, more than the {MAX_SERVICE_KEYS} the kernel table holds"
    )]
    TooManyKeys { count: usize },
    #[error(
        "the kernel's service table points at {live} regions of the slot table, leaving none free; `cplb dataplane detach` clears it"
    )]
    NoFreeRegion { live: usize },
}

impl Tables {
    /// Checks the bounds the maps impose and that every index names a
    /// backend.
    pub fn validate(&self) -> Result<(), TablesError> {
        if self.services.len() > MAX_SERVICES {
            return Err(TablesError::TooManyServices {
                count: self.services.len(),
            });
        }
        let mut seen = HashSet::new();
        for b in &self.backends {
            if !seen.insert(b.addr) {
                return Err(TablesError::DuplicateBackend { addr: b.addr });
            }
        }
        let mut listens = HashSet::new();
        for s in &self.services {
            if !listens.insert(s.listen) {
                return Err(TablesError::DuplicateService { listen: s.listen });
            }
            if s.slots.len() > MAX_SLOTS {
                return Err(TablesError::TooManySlots {
                    listen: s.listen,
                    count: s.slots.len(),
                });
            }
            for (i, slot) in s.slots.iter().enumerate() {
                if slot.len() > CANDIDATES {
                    return Err(TablesError::TooManyCandidates {
                        listen: s.listen,
                        slot: i,
                        count: slot.len(),
                    });
                }
                if let Some(&index) = slot.iter().find(|&&b| b as usize >= self.backends.len()) {
                    return Err(TablesError::UnknownBackend {
                        listen: s.listen,
                        slot: i,
                        index,
                        count: self.backends.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The concrete addresses a connect names to reach `listen`. A wildcard
/// listener accepts connects to any local address; the programs match
/// exact addresses only (a wildcard entry would also catch connects to
/// other hosts on that port), so it stands for the host's addresses now:
/// loopback and each interface's, of its family (cplb's `[::]` listener
/// is IPv6-only). Link-local IPv6 is left out (its scope is not in the
/// key). Connects to an address missing here (one added after the last
/// publish, or 127.0.0.2) still reach the proxy.
pub(crate) fn expand(listen: SocketAddr, local: &[IpAddr]) -> Vec<SocketAddr> {
    if !is_wildcard(listen.ip()) {
        return vec![listen];
    }
    let v4 = listen.is_ipv4();
    let loopback = if v4 {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    };
    let mut out = vec![SocketAddr::new(loopback, listen.port())];
    for &ip in local {
        let fits = match ip {
            IpAddr::V4(_) => v4,
            // fe80::/10
            IpAddr::V6(v6) => !v4 && (v6.segments()[0] & 0xffc0) != 0xfe80,
        };
        let sa = SocketAddr::new(ip, listen.port());
        if fits && !is_wildcard(ip) && !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// A service's lookup table from the ring: `size` slots, slot `i` holding
/// the ring walk (first `CANDIDATES` distinct upstreams) from the start of
/// its slice of the 32-bit hash space, `i * 2^32 / size`. With `size` 1,
/// the walk from `hash` (the node's key hash) instead. Indexes are ring
/// indexes, which are `Tables::backends` indexes when the backends are
/// listed in ring order.
pub fn slots_from_ring(ring: &Ring, size: usize, hash: u32) -> Vec<Vec<u16>> {
    let walk = |h: u32| -> Vec<u16> { ring.walk(h).take(CANDIDATES).map(|i| i as u16).collect() };
    if size <= 1 {
        return vec![walk(hash)];
    }
    let size = size.min(MAX_SLOTS) as u64;
    (0..size).map(|i| walk(((i << 32) / size) as u32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(addr: &str) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            max_fails: 1,
            fail_timeout_ms: 10_000,
            usable: true,
        }
    }

    fn tables(slots: Vec<Vec<u16>>) -> Tables {
        Tables {
            services: vec![Service {
                listen: "127.0.0.1:8443".parse().unwrap(),
                slots,
            }],
            backends: vec![backend("127.0.0.2:6443"), backend("127.0.0.3:6443")],
        }
    }

    #[test]
    fn validate_names_each_bound() {
        assert_eq!(tables(vec![vec![0, 1]]).validate(), Ok(()));
        assert!(matches!(
            tables(vec![vec![0, 2]]).validate(),
            Err(TablesError::UnknownBackend {
                slot: 0,
                index: 2,
                ..
            })
        ));
        assert!(matches!(
            tables(vec![vec![0; CANDIDATES + 1]]).validate(),
            Err(TablesError::TooManyCandidates { .. })
        ));
        assert!(matches!(
            tables(vec![vec![0]; MAX_SLOTS + 1]).validate(),
            Err(TablesError::TooManySlots { .. })
        ));
        let mut t = tables(vec![vec![0]]);
        t.backends.push(backend("127.0.0.2:6443"));
        assert!(matches!(
            t.validate(),
            Err(TablesError::DuplicateBackend { .. })
        ));
        let mut t = tables(vec![vec![0]]);
        t.services.push(t.services[0].clone());
        assert!(matches!(
            t.validate(),
            Err(TablesError::DuplicateService { .. })
        ));
        let mut t = tables(vec![]);
        t.services = (0..=MAX_SERVICES as u16)
            .map(|p| Service {
                listen: SocketAddr::from(([127, 0, 0, 1], 1000 + p)),
                slots: vec![],
            })
            .collect();
        assert!(matches!(
            t.validate(),
            Err(TablesError::TooManyServices { .. })
        ));
    }

    #[test]
    fn expand_keeps_exact_and_spreads_wildcards_by_family() {
        let local: Vec<IpAddr> = ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::5", "fe80::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let exact: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(expand(exact, &local), vec![exact]);
        let v4: Vec<String> = expand("0.0.0.0:8443".parse().unwrap(), &local)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(v4, ["127.0.0.1:8443", "10.1.2.3:8443"]);
        let v6: Vec<String> = expand("[::]:8443".parse().unwrap(), &local)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(v6, ["[::1]:8443", "[2001:db8::5]:8443"]);
    }

    #[test]
    fn one_slot_is_the_walk_from_the_node_hash() {
        let ring = Ring::new([("a:1", 1), ("b:1", 1), ("c:1", 1)]).unwrap();
        let h = crate::ring::hash_key(b"node-7");
        let slots = slots_from_ring(&ring, 1, h);
        let want: Vec<u16> = ring.walk(h).map(|i| i as u16).collect();
        assert_eq!(slots, vec![want]);
    }

    #[test]
    fn many_slots_follow_the_ring_shares() {
        let ring = Ring::new([("a:1", 1), ("b:1", 2), ("c:1", 1), ("d:1", 1), ("e:1", 1)]).unwrap();
        let slots = slots_from_ring(&ring, MAX_SLOTS, 0);
        assert_eq!(slots.len(), MAX_SLOTS);
        let mut count = [0usize; 5];
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(s.len(), CANDIDATES, "slot {i}");
            let distinct: HashSet<_> = s.iter().collect();
            assert_eq!(distinct.len(), CANDIDATES, "slot {i}: distinct candidates");
            let start = (((i as u64) << 32) / MAX_SLOTS as u64) as u32;
            assert_eq!(Some(s[0] as usize), ring.first(start), "slot {i}: home");
            count[s[0] as usize] += 1;
        }
        for (server, share) in ring.shares().iter().enumerate() {
            let got = count[server] as f64 / MAX_SLOTS as f64;
            assert!(
                (got - share).abs() < 0.01,
                "server {server}: {got:.4} of the slots, ring share {share:.4}"
            );
        }
    }
}
