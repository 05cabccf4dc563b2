//! `cplb simulate`: a cluster of N nodes, each running one proxy, against M
//! masters, under simulated time with no sockets. The proxies use cplb's
//! own ring walk (`Ring::walk`), home computation (`failback::home`,
//! `placement`, `rehome`) and fail-back scheduler (`HomeSchedule`), and are
//! compared with other strategies side by side (`strategy`).
//!
//! Model, kept deliberately simple and stated in docs/failback.md: every
//! node sees a master die or return at the same instant (the worst case for
//! a herd); a dead master's clients reconnect at once; churn picks random
//! connections at a fixed rate, the same ones in every strategy.

mod args;
mod cluster;
mod engine;
mod lane;
mod plot;
mod report;
mod scenario;
mod strategy;

use std::time::Duration;

pub use args::Args;
pub use engine::{BALANCED, Report, StrategyReport};
pub use lane::Episodes;
pub use scenario::Scenario;
pub use strategy::Strategy;

use crate::failback::Failback;

/// Largest sizes accepted: the arrays are `u8` master indices and the run
/// should stay in memory comfortably.
pub const MAX_NODES: usize = 100_000;
pub const MAX_MASTERS: usize = 16;
pub const MAX_CONNS_PER_NODE: usize = 1000;
/// Connections in all (five strategies keep one byte per connection).
pub const MAX_CONNECTIONS: usize = 10_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub masters: usize,
    pub conns_per_node: usize,
    pub scenario: Scenario,
    pub duration: Duration,
    /// Reconnects per connection per hour, for the clients' own reasons.
    pub churn_per_hour: f64,
    pub seed: u64,
    pub failback: Failback,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("could not write the plot to {path}: {reason}")]
    Plot { path: String, reason: String },
    #[error("could not write the report")]
    Write(#[from] std::io::Error),
    #[error(transparent)]
    Ring(#[from] crate::ring::TooManyServers),
}

impl Params {
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |flag, reason: String| Err(SimError::Invalid { flag, reason });
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return bad(
                "nodes",
                format!("{} is outside 1..={MAX_NODES}", self.nodes),
            );
        }
        if !(1..=MAX_MASTERS).contains(&self.masters) {
            return bad(
                "masters",
                format!("{} is outside 1..={MAX_MASTERS}", self.masters),
            );
        }
        if !(1..=MAX_CONNS_PER_NODE).contains(&self.conns_per_node) {
            return bad(
                "conns-per-node",
                format!(
                    "{} is outside 1..={MAX_CONNS_PER_NODE}",
                    self.conns_per_node
                ),
            );
        }
        if self.nodes * self.conns_per_node > MAX_CONNECTIONS {
            return bad(
                "conns-per-node",
                format!(
                    "{} nodes x {} is above {MAX_CONNECTIONS} connections in all",
                    self.nodes, self.conns_per_node
                ),
            );
        }
        if self.scenario == Scenario::AddMaster && self.masters == MAX_MASTERS {
            return bad(
                "masters",
                format!("add-master needs at most {}", MAX_MASTERS - 1),
            );
        }
        let last = scenario::timeline(self.scenario, self.masters)
            .last()
            .map_or(0, |&(t, _)| t);
        let min = Duration::from_millis(last) + Duration::from_secs(60);
        if self.duration < min || self.duration > MAX_DURATION {
            return bad(
                "duration",
                format!(
                    "{} must be between {} (the scenario plus a minute) and 24h",
                    humantime::format_duration(self.duration),
                    humantime::format_duration(min)
                ),
            );
        }
        if !(0.0..=3600.0).contains(&self.churn_per_hour) {
            return bad(
                "churn",
                format!("{} is outside 0..=3600 per hour", self.churn_per_hour),
            );
        }
        Ok(())
    }
}

/// Validates and runs the simulation.
pub fn simulate(p: &Params) -> Result<Report, SimError> {
    p.validate()?;
    engine::run(p)
}

/// `cplb simulate`: runs, prints the table, draws the plot if asked.
pub fn command(args: &Args, out: &mut dyn std::io::Write) -> Result<(), SimError> {
    let p = args.params()?;
    let started = std::time::Instant::now();
    let r = simulate(&p)?;
    let took = started.elapsed();
    report::write_table(out, &p, &r, took)?;
    if let Some(path) = &args.plot {
        plot::draw(path, &p, &r).map_err(|reason| SimError::Plot {
            path: path.display().to_string(),
            reason,
        })?;
        writeln!(out, "plot: {}", path.display())?;
    }
    Ok(())
}

/// splitmix64: small, seedable, good enough to pick churned connections.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(Rng::new(3).next(), Rng::new(3).next());
    }
}
