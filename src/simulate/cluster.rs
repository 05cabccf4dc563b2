//! The simulated cluster: masters (up or down, in the ring or not yet), the
//! rings, and each node's walk and home computed with cplb's own code.

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
    /// Walk orders for the current ring, `nodes × present` (node keys).
    walks: Vec<u8>,
    /// nginx's walk for the key "127.0.0.1".
    nginx_walk: Vec<u8>,
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
            walks: Vec::new(),
            nginx_walk: Vec::new(),
            ring: Ring::empty(),
            node_hash,
        };
        c.set_present(masters)?;
        Ok(c)
    }

    /// Discovery changed the set to the first `present` masters: rebuild
    /// the ring and every node's walk.
    pub(crate) fn set_present(&mut self, present: usize) -> Result<(), TooManyServers> {
        let addrs: Vec<String> = (0..present).map(address).collect();
        self.ring = Ring::new(addrs.iter().map(|a| (a.as_str(), 1)))?;
        self.present = present;
        self.walks = Vec::with_capacity(self.nodes * present);
        for &h in &self.node_hash {
            self.walks.extend(self.ring.walk(h).map(|m| m as u8));
        }
        self.nginx_walk = self
            .ring
            .walk(ring::hash_key(b"127.0.0.1"))
            .map(|m| m as u8)
            .collect();
        Ok(())
    }

    pub(crate) fn home(&self, node: usize) -> usize {
        failback::home(&self.ring, self.node_hash[node]).unwrap_or(0)
    }

    /// First usable master on the node's walk; with none usable, the first
    /// (cplb's last resort).
    pub(crate) fn first_usable(&self, node: usize) -> usize {
        let walk = &self.walks[node * self.present..(node + 1) * self.present];
        Self::pick(walk, &self.up)
    }

    pub(crate) fn nginx_first_usable(&self) -> usize {
        Self::pick(&self.nginx_walk, &self.up)
    }

    fn pick(walk: &[u8], up: &[bool]) -> usize {
        walk.iter()
            .map(|&m| m as usize)
            .find(|&m| up[m])
            .unwrap_or(walk[0] as usize)
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
