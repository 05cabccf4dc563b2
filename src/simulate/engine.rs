//! The simulation loop: simulated seconds, scenario changes, churn, the
//! fail-back schedulers, and the per-second measurements.

use super::cluster::Cluster;
use super::lane::{Episodes, Lane};
use super::scenario::{self, Change};
use super::strategy::Strategy;
use super::{Params, Rng, SimError};

/// Balanced: max/mean connections across usable masters at most this.
pub const BALANCED: f64 = 1.1;

/// One strategy's results.
#[derive(Debug, Clone)]
pub struct StrategyReport {
    pub strategy: Strategy,
    /// max/mean over the usable masters, one value per simulated second.
    pub ratio: Vec<f64>,
    /// Connections per master, `seconds × masters`.
    pub per_master: Vec<u32>,
    /// New connections per second at the master that last came back (0
    /// while none is returning), one value per simulated second.
    pub herd: Vec<u32>,
    /// max/mean just before the first change.
    pub before: f64,
    /// max/mean at the end.
    pub end: f64,
    /// Seconds after the last master came back (or joined) until max/mean
    /// is at most `BALANCED` and stays so to the end; `None`: never.
    pub balanced_after_s: Option<u64>,
    /// Peak new connections per second at the master that last came back,
    /// from its return until the next master goes down.
    pub herd_at_returning: u64,
    /// Peak new connections per second at any one master, whole run.
    pub peak_any: u64,
    /// Reconnects caused by dead masters and by the strategy (not churn).
    pub reconnects: u64,
    /// Of those, closes made to move connections home.
    pub failback_closes: u64,
    pub episodes: Episodes,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub masters: usize,
    pub seconds: u64,
    /// When the last master came back or joined.
    pub recovered_s: u64,
    pub churn_reconnects: u64,
    /// max/mean of the ring's own shares, at the start and at the end: the
    /// best cplb's hashing can do for uniformly spread node ids.
    pub ring_ratio: (f64, f64),
    pub strategies: Vec<StrategyReport>,
}

pub(crate) fn run(p: &Params) -> Result<Report, SimError> {
    let total = scenario::total_masters(p.scenario, p.masters);
    let mut cl = Cluster::new(p.nodes, p.masters, total, p.conns_per_node)?;
    let ring_before = share_ratio(&cl.ring.shares());
    let mut lanes: Vec<Lane> = Strategy::ALL
        .iter()
        .map(|&s| Lane::new(s, &cl, p.failback))
        .collect();
    let timeline = scenario::timeline(p.scenario, p.masters);
    let recovered_ms = timeline
        .iter()
        .filter(|(_, c)| !matches!(c, Change::Down(_)))
        .map(|&(t, _)| t)
        .max()
        .unwrap_or(0);
    let seconds = p.duration.as_secs();
    let conns = p.nodes * p.conns_per_node;
    let churn_per_s = conns as f64 * p.churn_per_hour / 3600.0;
    let mut churn_acc = 0.0;
    let mut churn_reconnects = 0;
    let mut rng = Rng::new(p.seed);
    let mut next_change = 0;
    let mut returning: Option<usize> = None;
    let mut out: Vec<StrategyReport> = lanes
        .iter()
        .map(|l| StrategyReport {
            strategy: l.strategy,
            ratio: Vec::with_capacity(seconds as usize),
            per_master: Vec::with_capacity(seconds as usize * total),
            herd: Vec::with_capacity(seconds as usize),
            before: 0.0,
            end: 0.0,
            balanced_after_s: None,
            herd_at_returning: 0,
            peak_any: 0,
            reconnects: 0,
            failback_closes: 0,
            episodes: Episodes::default(),
        })
        .collect();

    for s in 0..seconds {
        let start = s * 1000;
        let end = start + 1000;
        while let Some(&(t, change)) = timeline.get(next_change) {
            if t >= end {
                break;
            }
            next_change += 1;
            match change {
                Change::Down(m) => {
                    cl.up[m] = false;
                    returning = None;
                    lanes.iter_mut().for_each(|l| l.master_down(&cl, m, t));
                }
                Change::Up(m) => {
                    cl.up[m] = true;
                    returning = Some(m);
                    lanes.iter_mut().for_each(|l| l.master_up(&cl, m, t));
                }
                Change::Add(m) => {
                    cl.up[m] = true;
                    cl.set_present(m + 1)?;
                    returning = Some(m);
                    lanes.iter_mut().for_each(|l| l.master_added(&cl, t));
                }
            }
        }
        // Churn: the same clients reconnect in every lane.
        churn_acc += churn_per_s;
        while churn_acc >= 1.0 {
            churn_acc -= 1.0;
            let c = rng.below(conns as u64) as usize;
            lanes.iter_mut().for_each(|l| l.reconnect(&cl, c));
            churn_reconnects += 1;
        }
        for (lane, r) in lanes.iter_mut().zip(out.iter_mut()) {
            lane.run_failback(&cl, end);
            let ratio = max_over_mean(&lane.load, &cl);
            r.ratio.push(ratio);
            r.per_master.extend(lane.load.iter().map(|&n| n as u32));
            let peak = lane.arrivals.iter().copied().max().unwrap_or(0);
            r.peak_any = r.peak_any.max(peak);
            let herd = returning.map_or(0, |m| lane.arrivals[m]);
            r.herd_at_returning = r.herd_at_returning.max(herd);
            r.herd.push(herd as u32);
            lane.arrivals.fill(0);
        }
    }
    let first_change_s = timeline.first().map_or(0, |&(t, _)| t / 1000);
    let recovered_s = recovered_ms / 1000;
    for (lane, r) in lanes.iter().zip(out.iter_mut()) {
        r.before = r.ratio[first_change_s.saturating_sub(1) as usize];
        r.end = *r.ratio.last().unwrap_or(&0.0);
        let settled_from = r
            .ratio
            .iter()
            .rposition(|&x| x > BALANCED)
            .map_or(0, |i| i + 1) as u64;
        r.balanced_after_s =
            (settled_from < seconds).then(|| settled_from.saturating_sub(recovered_s));
        r.reconnects = lane.caused;
        r.failback_closes = lane.failback_closes;
        r.episodes = lane.episodes;
    }
    Ok(Report {
        masters: total,
        seconds,
        recovered_s,
        churn_reconnects,
        ring_ratio: (ring_before, share_ratio(&cl.ring.shares())),
        strategies: out,
    })
}

/// max/mean connections over the masters that are in the set and up.
fn max_over_mean(load: &[u64], cl: &Cluster) -> f64 {
    let (mut max, mut sum, mut n) = (0u64, 0u64, 0u64);
    for (&l, _) in load
        .iter()
        .zip(&cl.up)
        .take(cl.present)
        .filter(|(_, up)| **up)
    {
        max = max.max(l);
        sum += l;
        n += 1;
    }
    if sum == 0 {
        return 1.0;
    }
    max as f64 * n as f64 / sum as f64
}

fn share_ratio(shares: &[f64]) -> f64 {
    let max = shares.iter().copied().fold(0.0, f64::max);
    max * shares.len() as f64 / shares.iter().sum::<f64>().max(f64::MIN_POSITIVE)
}
