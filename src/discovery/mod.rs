//! Discovery: cplb learns the API servers from the cluster's own
//! EndpointSlices (issue 11). The reloader runs it through [`run::Wiring`],
//! which keeps the applied set ([`apply`]) and its metrics ([`metrics`]);
//! underneath: the `discovery:` config section
//! ([`config`]), the kube client that dials an upstream directly and never
//! the kubeconfig's server ([`client`]), the watcher that folds slices into
//! ready `ip:port` addresses and publishes them debounced ([`watcher`],
//! [`fold`]; its timing in `pace`), the state file ([`state`]), and what
//! `cplb --check` asks of both ([`check`]). See docs/discovery.md.

pub(crate) mod apply;
pub mod check;
pub mod client;
pub mod config;
pub mod fold;
pub mod limit;
pub(crate) mod metrics;
mod pace;
pub(crate) mod run;
pub mod state;
pub mod watcher;

pub use config::{DiscoveryConfig, RawDiscovery};
pub use watcher::{Discovered, Settings, Stats, run};

/// The first few of a long list of addresses, for one log line.
pub(crate) fn short_list(addrs: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = addrs
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if addrs.len() > SHOWN {
        text.push_str(&format!(" and {} more", addrs.len() - SHOWN));
    }
    text
}
