//! The strategies compared side by side, and how each picks a master for a
//! new connection. Walks come from the real `Ring::walk`, precomputed once
//! per node (see `cluster`).

use super::cluster::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// nginx `hash $remote_addr consistent`: every client is 127.0.0.1.
    NginxHash,
    /// kubespray's nginx `least_conn`, each node counting only its own.
    LeastConn,
    /// One active server (the node's home); the moment it is back, every
    /// other connection is closed.
    K3s,
    /// cplb's ring walk, no fail-back.
    CplbOff,
    /// cplb's ring walk with the fail-back scheduler.
    CplbOn,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::NginxHash,
        Strategy::LeastConn,
        Strategy::K3s,
        Strategy::CplbOff,
        Strategy::CplbOn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::NginxHash => "nginx hash $remote_addr",
            Strategy::LeastConn => "kubespray least_conn",
            Strategy::K3s => "k3s-style",
            Strategy::CplbOff => "cplb fail-back off",
            Strategy::CplbOn => "cplb fail-back on",
        }
    }
}

/// Per-node state of kubespray's least_conn: this node's connections per
/// master, and the round-robin position that breaks ties (nginx's smooth
/// weighted round robin over equal weights cycles in list order).
pub(crate) struct LeastConn {
    pub(crate) counts: Vec<u16>,
    pub(crate) rr: Vec<u8>,
}

impl LeastConn {
    pub(crate) fn new(nodes: usize, masters: usize) -> LeastConn {
        LeastConn {
            counts: vec![0; nodes * masters],
            rr: vec![0; nodes],
        }
    }

    pub(crate) fn choose(&mut self, cl: &Cluster, node: usize) -> usize {
        let mt = cl.total_masters;
        let counts = &self.counts[node * mt..(node + 1) * mt];
        let start = self.rr[node] as usize;
        let mut best: Option<(u16, usize)> = None;
        for k in 0..cl.present {
            let m = (start + k) % cl.present;
            if cl.up[m] && best.is_none_or(|(c, _)| counts[m] < c) {
                best = Some((counts[m], m));
            }
        }
        let m = best.map_or(0, |(_, m)| m);
        self.rr[node] = ((m + 1) % cl.present) as u8;
        m
    }
}
