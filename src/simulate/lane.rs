//! One strategy's view of the cluster: where every connection is, the load
//! per master, and the counters the report is made of.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::cluster::Cluster;
use super::strategy::{LeastConn, Strategy};
use crate::failback::{self, EndReason, Event, Failback, HomeSchedule, Placement};

/// Per node, for cplb with fail-back: its home, how many of its
/// connections are displaced from it, and its scheduler.
struct Failbacks {
    policy: Failback,
    delays: Vec<std::time::Duration>,
    sched: Vec<HomeSchedule>,
    displaced: Vec<u32>,
    wake: Vec<u64>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Episodes {
    pub started: u64,
    pub done: u64,
    pub home_unusable: u64,
    pub home_removed: u64,
}

pub(crate) struct Lane {
    pub(crate) strategy: Strategy,
    conn: Vec<u8>,
    pub(crate) load: Vec<u64>,
    pub(crate) arrivals: Vec<u64>,
    /// Homes as this strategy sees them (k3s: its first server, fixed).
    home: Vec<u8>,
    least: Option<LeastConn>,
    fb: Option<Failbacks>,
    /// Reconnects the strategy or a dead master caused (not churn).
    pub(crate) caused: u64,
    /// Of those, closes made to move a connection home.
    pub(crate) failback_closes: u64,
    pub(crate) episodes: Episodes,
}

const NEVER: u64 = u64::MAX;

impl Lane {
    pub(crate) fn new(strategy: Strategy, cl: &Cluster, policy: Failback) -> Lane {
        let n = cl.nodes;
        let fb = (strategy == Strategy::CplbOn).then(|| {
            let delays: Vec<_> = (0..n)
                .map(|i| failback::node_delay(&super::cluster::node_id(i), policy.spread))
                .collect();
            Failbacks {
                sched: delays
                    .iter()
                    .map(|&d| {
                        let mut s = HomeSchedule::new(&policy, d);
                        // Up since before the run began: settled.
                        s.set_usable(true, 0, 0, |_| {});
                        s
                    })
                    .collect(),
                policy,
                delays,
                displaced: vec![0; n],
                wake: vec![NEVER; n],
                heap: BinaryHeap::new(),
            }
        });
        let mut lane = Lane {
            strategy,
            conn: vec![0; n * cl.conns_per_node],
            load: vec![0; cl.total_masters],
            arrivals: vec![0; cl.total_masters],
            home: (0..n).map(|i| cl.home(i) as u8).collect(),
            least: (strategy == Strategy::LeastConn).then(|| LeastConn::new(n, cl.total_masters)),
            fb,
            caused: 0,
            failback_closes: 0,
            episodes: Episodes::default(),
        };
        for c in 0..lane.conn.len() {
            lane.connect(cl, c);
        }
        lane.arrivals.fill(0);
        lane
    }

    fn choose(&mut self, cl: &Cluster, node: usize) -> usize {
        match self.strategy {
            Strategy::NginxHash => cl.nginx_first_usable(),
            Strategy::LeastConn => match &mut self.least {
                Some(l) => l.choose(cl, node),
                None => cl.first_usable(node),
            },
            Strategy::K3s => {
                let home = self.home[node] as usize;
                if cl.up[home] {
                    home
                } else {
                    cl.first_usable(node)
                }
            }
            Strategy::CplbOff | Strategy::CplbOn => cl.first_usable(node),
        }
    }

    fn connect(&mut self, cl: &Cluster, c: usize) {
        let node = c / cl.conns_per_node;
        let m = self.choose(cl, node);
        self.conn[c] = m as u8;
        self.load[m] += 1;
        self.arrivals[m] += 1;
        if let Some(l) = &mut self.least {
            l.counts[node * cl.total_masters + m] += 1;
        }
        if let Some(fb) = &mut self.fb {
            let placed = failback::placement(&cl.ring, cl.node_hash[node], m);
            if matches!(placed, Placement::Displaced { .. }) {
                fb.displaced[node] += 1;
            }
        }
    }

    fn disconnect(&mut self, cl: &Cluster, c: usize) {
        let node = c / cl.conns_per_node;
        let m = self.conn[c] as usize;
        self.load[m] -= 1;
        if let Some(l) = &mut self.least {
            l.counts[node * cl.total_masters + m] -= 1;
        }
        if let Some(fb) = &mut self.fb
            && m != self.home[node] as usize
        {
            fb.displaced[node] = fb.displaced[node].saturating_sub(1);
        }
    }

    /// The client behind connection `c` reconnects (churn, or we closed it).
    pub(crate) fn reconnect(&mut self, cl: &Cluster, c: usize) {
        self.disconnect(cl, c);
        self.connect(cl, c);
    }

    /// Master `m` died (already marked down in `cl`): its clients lose
    /// their connections and reconnect at once.
    pub(crate) fn master_down(&mut self, cl: &Cluster, m: usize, now: u64) {
        if let Some(fb) = &mut self.fb {
            for node in 0..cl.nodes {
                if self.home[node] as usize == m {
                    let episodes = &mut self.episodes;
                    fb.sched[node].set_usable(false, now, fb.displaced[node] as u64, |e| {
                        count(episodes, e)
                    });
                    fb.wake[node] = NEVER;
                }
            }
        }
        for c in 0..self.conn.len() {
            if self.conn[c] as usize == m {
                self.reconnect(cl, c);
                self.caused += 1;
            }
        }
    }

    /// Master `m` is usable again (already marked up in `cl`).
    pub(crate) fn master_up(&mut self, cl: &Cluster, m: usize, now: u64) {
        match self.strategy {
            Strategy::K3s => {
                for c in 0..self.conn.len() {
                    let node = c / cl.conns_per_node;
                    if self.home[node] as usize == m && self.conn[c] as usize != m {
                        self.reconnect(cl, c);
                        self.caused += 1;
                        self.failback_closes += 1;
                    }
                }
            }
            Strategy::CplbOn => {
                let Some(fb) = &mut self.fb else { return };
                for node in 0..cl.nodes {
                    if self.home[node] as usize == m {
                        let wake =
                            fb.sched[node].set_usable(true, now, fb.displaced[node] as u64, |_| {});
                        fb.arm(node, wake);
                    }
                }
            }
            _ => {}
        }
    }

    /// Discovery added a master (the ring in `cl` is already the new one).
    /// cplb recomputes homes: a connection whose key now belongs to the new
    /// master is displaced towards it (`failback::rehome`). k3s keeps the
    /// server it was given.
    pub(crate) fn master_added(&mut self, cl: &Cluster, now: u64) {
        if !matches!(self.strategy, Strategy::CplbOn | Strategy::CplbOff) {
            return;
        }
        let per = cl.conns_per_node;
        for node in 0..cl.nodes {
            let new_home = cl.home(node);
            let old_home = self.home[node] as usize;
            self.home[node] = new_home as u8;
            let Some(fb) = &mut self.fb else { continue };
            if new_home == old_home {
                continue;
            }
            fb.displaced[node] = (0..per)
                .filter(|k| {
                    let current = self.conn[node * per + k] as usize;
                    let placed = failback::rehome(old_home < cl.present, Some(new_home), current);
                    matches!(placed, Placement::Displaced { .. })
                })
                .count() as u32;
            // The new home is a new upstream: a fresh schedule, usable now.
            fb.sched[node] = HomeSchedule::new(&fb.policy, fb.delays[node]);
            let wake = fb.sched[node].set_usable(true, now, fb.displaced[node] as u64, |_| {});
            fb.arm(node, wake);
        }
    }

    /// Runs the fail-back schedulers due before `end_ms`.
    pub(crate) fn run_failback(&mut self, cl: &Cluster, end_ms: u64) {
        loop {
            let Some(fb) = &mut self.fb else { return };
            let Some(&Reverse((t, node))) = fb.heap.peek() else {
                return;
            };
            if t >= end_ms {
                return;
            }
            fb.heap.pop();
            let node = node as usize;
            if fb.wake[node] != t {
                continue; // superseded
            }
            let episodes = &mut self.episodes;
            let step = fb.sched[node].poll(t, fb.displaced[node] as u64, |e| count(episodes, e));
            fb.wake[node] = NEVER;
            fb.arm(node, step.wake_ms);
            if step.close {
                let home = self.home[node] as usize;
                let per = cl.conns_per_node;
                if let Some(c) =
                    (node * per..(node + 1) * per).find(|&c| self.conn[c] as usize != home)
                {
                    self.reconnect(cl, c);
                    self.caused += 1;
                    self.failback_closes += 1;
                }
            }
        }
    }
}

impl Failbacks {
    fn arm(&mut self, node: usize, wake: Option<u64>) {
        if let Some(t) = wake {
            self.wake[node] = t;
            self.heap.push(Reverse((t, node as u32)));
        }
    }
}

fn count(e: &mut Episodes, ev: Event) {
    match ev {
        Event::Started { .. } => e.started += 1,
        Event::Ended { reason, .. } => match reason {
            EndReason::Done => e.done += 1,
            EndReason::HomeUnusable => e.home_unusable += 1,
            EndReason::HomeRemoved => e.home_removed += 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The displaced counts the scheduler is given must be exactly the
    /// connections not at home, after every kind of move.
    fn check(lane: &Lane, cl: &Cluster) {
        let per = cl.conns_per_node;
        assert_eq!(
            lane.load.iter().sum::<u64>() as usize,
            cl.nodes * per,
            "{:?}",
            lane.strategy
        );
        if let Some(fb) = &lane.fb {
            for node in 0..cl.nodes {
                let home = cl.home(node);
                let away = (0..per)
                    .filter(|k| lane.conn[node * per + k] as usize != home)
                    .count();
                assert_eq!(fb.displaced[node] as usize, away, "node {node}");
            }
        }
    }

    #[test]
    fn accounting_holds_through_down_up_failback_and_add() {
        let policy = Failback::new(
            true,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10),
            2,
        )
        .unwrap();
        let mut cl = Cluster::new(200, 3, 4, 4).unwrap();
        let mut lanes: Vec<Lane> = Strategy::ALL
            .iter()
            .map(|&s| Lane::new(s, &cl, policy))
            .collect();
        cl.up[0] = false;
        for l in &mut lanes {
            l.master_down(&cl, 0, 1000);
            check(l, &cl);
        }
        cl.up[0] = true;
        for l in &mut lanes {
            l.master_up(&cl, 0, 2000);
            l.run_failback(&cl, 9000); // mid-episode for some nodes
            check(l, &cl);
            l.run_failback(&cl, 60_000);
            check(l, &cl);
        }
        let on = &lanes[Strategy::ALL.len() - 1];
        assert_eq!(on.strategy, Strategy::CplbOn);
        assert!(on.fb.as_ref().unwrap().displaced.iter().all(|&d| d == 0));
        assert!(on.failback_closes > 0);
        cl.set_present(4).unwrap();
        for l in &mut lanes {
            l.master_added(&cl, 70_000);
            check(l, &cl);
            l.run_failback(&cl, 200_000);
            check(l, &cl);
        }
        assert!(lanes[Strategy::ALL.len() - 1].load[3] > 0);
    }

    #[test]
    fn least_conn_spreads_a_node_three_three_two() {
        let cl = Cluster::new(2, 3, 3, 8).unwrap();
        let lane = Lane::new(Strategy::LeastConn, &cl, Failback::default());
        // 8 per node over 3 masters: 3, 3, 2, the first in list order
        // getting the extra, as a fresh nginx does.
        assert_eq!(lane.load, [6, 6, 4]);
        assert_eq!(&lane.conn[..8], &[0, 1, 2, 0, 1, 2, 0, 1]);
    }
}
