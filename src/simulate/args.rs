//! `cplb simulate` flags.

use std::path::PathBuf;
use std::time::Duration;

use super::{Params, Scenario, SimError};
use crate::failback::Failback;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes, each running one cplb (or other proxy).
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Masters at the start.
    #[arg(long, default_value_t = 3)]
    pub masters: usize,
    /// Long-lived connections per node (kubelet, kube-proxy, CNI, ...).
    #[arg(long, default_value_t = 8)]
    pub conns_per_node: usize,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Simulated time, e.g. 30m.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Reconnects per connection per hour, for the clients' own reasons.
    #[arg(long, default_value_t = 0.5)]
    pub churn: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also draw master load over time per strategy to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// failback.settle for cplb fail-back on.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub settle: Option<Duration>,
    /// failback.spread for cplb fail-back on.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub spread: Option<Duration>,
    /// failback.max_per_second for cplb fail-back on.
    #[arg(long)]
    pub max_per_second: Option<u64>,
}

impl Args {
    pub fn params(&self) -> Result<Params, SimError> {
        let d = Failback::default();
        let failback = Failback::new(
            true,
            self.settle.unwrap_or(d.settle),
            self.spread.unwrap_or(d.spread),
            self.max_per_second.unwrap_or(d.max_per_second.into()),
        )
        .map_err(|e| SimError::Invalid {
            flag: match e.field {
                "settle" => "settle",
                "spread" => "spread",
                _ => "max-per-second",
            },
            reason: e.reason,
        })?;
        Ok(Params {
            nodes: self.nodes,
            masters: self.masters,
            conns_per_node: self.conns_per_node,
            scenario: self.scenario,
            duration: self.duration,
            churn_per_hour: self.churn,
            seed: self.seed,
            failback,
        })
    }
}
