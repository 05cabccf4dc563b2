//! `/clients` (JSON) and `cplb status --clients` (one line per client):
//! the document, built from the registry, and its text.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::metrics::REFUSE_REASONS;
use super::procs::Visibility;
use super::registry::Registry;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `auto` or `off`.
    pub identify: String,
    /// `full` (root: process, cgroup, pod) or `uid_only`.
    pub visibility: String,
    /// Why only the uid is known, when it is.
    #[serde(default)]
    pub why: Option<String>,
    pub max_names: usize,
    pub clients: Vec<ClientReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    pub name: String,
    pub pids: Vec<u32>,
    pub open: u64,
    pub total: u64,
    /// New connections per second over the last minute.
    pub new_per_second: f64,
    /// By reason: max_connections, rate, fair_share.
    pub refused: std::collections::BTreeMap<String, u64>,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    /// The masters its connections went to (as the current config lists
    /// upstreams).
    pub masters: Vec<String>,
}

impl Report {
    pub(crate) fn collect(
        registry: &Registry,
        config: &super::ClientsConfig,
        upstreams: &[&str],
    ) -> Report {
        let second = registry.second(Instant::now());
        let clients = registry
            .list()
            .iter()
            .map(|c| {
                let book = c.book();
                let bits = c.masters.load(Ordering::Relaxed);
                ClientReport {
                    name: c.name.clone(),
                    pids: book.pids.iter().copied().collect(),
                    open: c.open(),
                    total: c.series.total.get(),
                    new_per_second: book.per_second(second),
                    refused: REFUSE_REASONS
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.to_string(), c.series.refused[i].get()))
                        .collect(),
                    bytes_to_upstream: c.bytes[0].load(Ordering::Relaxed),
                    bytes_to_client: c.bytes[1].load(Ordering::Relaxed),
                    masters: upstreams
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << (i % 64)) != 0)
                        .map(|(_, a)| a.to_string())
                        .collect(),
                }
            })
            .collect();
        let (visibility, why) = match &registry.visibility {
            Visibility::Full => ("full", None),
            Visibility::UidOnly(why) => ("uid_only", Some(why.clone())),
        };
        Report {
            identify: match config.identify {
                super::Identify::Auto => "auto",
                super::Identify::Off => "off",
            }
            .into(),
            visibility: visibility.into(),
            why,
            max_names: config.max_names,
            clients,
        }
    }

    /// `cplb status --clients`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.identify == "off" {
            s.push_str("clients are not named (clients.identify: off)\n");
        }
        if let Some(why) = &self.why {
            let _ = writeln!(s, "uid only: {why}");
        }
        let _ = writeln!(
            s,
            "{:<40} {:<16} {:>6} {:>7} {:>8} {:>12} {:>12}  masters",
            "CLIENT", "PIDS", "OPEN", "NEW/S", "REFUSED", "BYTES UP", "BYTES DOWN"
        );
        for c in &self.clients {
            let pids = c
                .pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let refused: u64 = c.refused.values().sum();
            let _ = writeln!(
                s,
                "{:<40} {:<16} {:>6} {:>7.2} {:>8} {:>12} {:>12}  {}",
                c.name,
                if pids.is_empty() { "-".into() } else { pids },
                c.open,
                c.new_per_second,
                refused,
                c.bytes_to_upstream,
                c.bytes_to_client,
                if c.masters.is_empty() {
                    "-".into()
                } else {
                    c.masters.join(",")
                }
            );
        }
        s
    }
}
