//! The simulated cluster: masters (up or down, in the ring or not yet), the
//! rings, and each node's walk and home computed with cplb's own code.

use crate::choice::{self, Standing};
use crate::failback;
use crate::ring::{self, Ring, TooManyServers};

pub(crate) struct Cluster {
    pub(crate) nodes: usize,
    pub(crate) conns_per_node: usize,
    /// Masters in the arrays, including one that joins later.
    pub(crate) total_masters: usize,
    /// Masters in the current upstream set (indices `0..present`).
    pub(crate) present: usize,
    pub(crate) up: Vec<bool>,
    pub(crate) ring: Ring,
    pub(crate) node_hash: Vec<u32>,
}

/// Master addresses as a cluster would have them; they seed the ring.
pub(crate) fn address(m: usize) -> String {
    format!("10.0.0.{}:6443", 11 + m)
}

impl Cluster {
    pub(crate) fn new(
        nodes: usize,
        masters: usize,
        total: usize,
        conns_per_node: usize,
    ) -> Result<Cluster, TooManyServers> {
        let node_hash = (0..nodes)
            .map(|n| ring::hash_key(node_id(n).as_bytes()))
            .collect();
        let mut c = Cluster {
            nodes,
            conns_per_node,
            total_masters: total,
            present: 0,
            up: vec![true; total],
            ring: Ring::empty(),
            node_hash,
        };
        c.set_present(masters)?;
        Ok(c)
    }

    /// Discovery changed the set to the first `present` masters: rebuild
    /// the ring.
    pub(crate) fn set_present(&mut self, present: usize) -> Result<(), TooManyServers> {
        let addrs: Vec<String> = (0..present).map(address).collect();
        self.ring = Ring::new(addrs.iter().map(|a| (a.as_str(), 1)))?;
        self.present = present;
        Ok(())
    }

    pub(crate) fn home(&self, node: usize) -> usize {
        failback::home(&self.ring, self.node_hash[node]).unwrap_or(0)
    }

    /// The master cplb's choice gives the node's first connect: the first
    /// usable on its walk; with none usable, the first (the last resort).
    pub(crate) fn first_usable(&self, node: usize) -> usize {
        self.pick(self.node_hash[node])
    }

    /// The same for nginx's key of every client, "127.0.0.1".
    pub(crate) fn nginx_first_usable(&self) -> usize {
        self.pick(ring::hash_key(b"127.0.0.1"))
    }

    fn pick(&self, hash: u32) -> usize {
        let view = |m: usize| {
            if self.up[m] {
                Standing::Usable
            } else {
                Standing::LastResort
            }
        };
        choice::Choice::new(&self.ring, hash, usize::MAX, view)
            .next()
            .map_or(0, |(m, _)| m)
    }
}

pub(crate) fn node_id(n: usize) -> String {
    format!("node-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_follow_the_ring_and_skip_down_masters() {
        let mut c = Cluster::new(50, 3, 3, 1).unwrap();
        for n in 0..50 {
            assert_eq!(c.first_usable(n), c.home(n));
        }
        let n = 7;
        let walk: Vec<usize> = c.ring.walk(c.node_hash[n]).collect();
        c.up[walk[0]] = false;
        assert_eq!(c.first_usable(n), walk[1]);
        assert_eq!(c.home(n), walk[0]);
    }
}
