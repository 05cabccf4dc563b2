//! One immutable view of the upstream set: the ring, the upstreams in ring
//! index order, and the settings new connections use. Published as a whole
//! through one `ArcSwap`, so a connection never sees a ring from one config
//! and upstreams or timeouts from another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, HashKey, UpstreamConfig};
use crate::health::Policy;
use crate::metrics::Metrics;
use crate::ring::{self, Ring, TooManyServers};
use crate::upstream::{StateTable, UpstreamState};

pub struct Snapshot {
    pub ring: Ring,
    pub upstreams: Vec<Upstream>,
    pub settings: Settings,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    pub policy: Policy,
    pub state: Arc<UpstreamState>,
    pub(crate) source: Source,
    /// Gone from the API, kept until `discovery.remove_after`: it stays in
    /// the ring (so its return is no churn) but gets new connections only
    /// as a last resort.
    pub draining: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Hedging: see `Config::first_byte_timeout`.
    pub first_byte_timeout: Option<Duration>,
    pub tcp_user_timeout: Option<Duration>,
    pub tries: usize,
    pub key: HashKey,
    /// crc32 of the node id, computed once: with `key: node` every
    /// connection of this process hashes the same.
    pub node_hash: u32,
    pub max_connections: usize,
    pub close_on_down: bool,
    /// Read when shutdown begins, so a reload can change it.
    pub shutdown_grace: Duration,
    /// Read by the fail-back driver on each tick, so a reload applies it.
    pub failback: crate::failback::Failback,
    /// This node's fail-back start delay in `[0, failback.spread)`, from
    /// the node id (`hash.node_id` as resolved, whatever `hash.key` is).
    pub failback_delay: Duration,
    /// Read by the client registry on each new connection, so a reload
    /// applies new limits to the next connection and never closes one.
    pub clients: std::sync::Arc<crate::clients::ClientsConfig>,
}

/// Where an upstream came from: the config file (the seed list when
/// discovery is on), discovery's state file, or the API.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    Static,
    State,
    Api,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::State => "state",
            Source::Api => "api",
        }
    }
}

/// One upstream of a snapshot-to-be, as its producer hands it over: the
/// static config, or discovery's applied set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) config: UpstreamConfig,
    pub(crate) source: Source,
    pub(crate) draining: bool,
}

impl Entry {
    /// The config's static upstreams (discovery off).
    pub(crate) fn statics(config: &Config) -> Vec<Entry> {
        config
            .upstreams
            .iter()
            .map(|u| Entry {
                config: u.clone(),
                source: Source::Static,
                draining: false,
            })
            .collect()
    }
}

/// What building a snapshot changed in the state table.
pub struct Built {
    pub snapshot: Snapshot,
    pub added: Vec<Arc<UpstreamState>>,
    pub removed: Vec<Arc<UpstreamState>>,
}

impl Snapshot {
    /// The config's static upstreams (discovery off).
    pub fn build(
        config: &Config,
        table: &mut StateTable,
        metrics: &Metrics,
    ) -> Result<Built, TooManyServers> {
        Self::build_with(config, &Entry::statics(config), table, metrics)
    }

    /// The settings of `config` with the upstreams `entries` (discovery
    /// decides them when it is on). More entries than a ring holds is an
    /// error, and the state table is left as it was: validation and
    /// discovery's cap keep lists within the bound, this reports a bug in
    /// either instead of panicking.
    pub(crate) fn build_with(
        config: &Config,
        entries: &[Entry],
        table: &mut StateTable,
        metrics: &Metrics,
    ) -> Result<Built, TooManyServers> {
        let ring = Ring::new(
            entries
                .iter()
                .map(|e| (e.config.address.as_str(), e.config.weight.get())),
        )?;
        let mut added = Vec::new();
        let upstreams = entries
            .iter()
            .map(|e| {
                let u = &e.config;
                let (state, new) = table.get_or_create(&u.address, metrics);
                if new {
                    added.push(state.clone());
                }
                Upstream {
                    config: u.clone(),
                    policy: Policy {
                        max_fails: u.max_fails,
                        fail_timeout_ms: crate::clock::millis(u.fail_timeout),
                    },
                    state,
                    source: e.source,
                    draining: e.draining,
                }
            })
            .collect();
        let keep: Vec<&str> = entries.iter().map(|e| e.config.address.as_str()).collect();
        let removed = table.retain(&keep);
        let settings = Settings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            first_byte_timeout: config.first_byte_timeout,
            tcp_user_timeout: config.tcp_user_timeout,
            tries: config.next_upstream_tries.get().min(entries.len()).max(1),
            key: config.hash.key,
            node_hash: ring::hash_key(config.hash.node_id.as_bytes()),
            max_connections: config.max_connections.get(),
            close_on_down: config.health_check.as_ref().is_none_or(|h| h.close_on_down),
            shutdown_grace: config.shutdown_grace,
            failback: config.failback,
            failback_delay: crate::failback::node_delay(
                &config.hash.node_id,
                config.failback.spread,
            ),
            clients: std::sync::Arc::new(config.clients.clone()),
        };
        Ok(Built {
            snapshot: Snapshot {
                ring,
                upstreams,
                settings,
            },
            added,
            removed,
        })
    }

    /// The ring lookup hash for a client, per `hash.key`. Formats into a
    /// stack buffer: no allocation per connection.
    pub(crate) fn key_hash(&self, peer: SocketAddr) -> u32 {
        use std::io::Write;
        let mut buf = [0u8; 64];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        // 64 bytes hold any "[v6%scope]:port"; should one ever not fit, the
        // hash of the written prefix is still a valid (if coarser) key.
        let _ = match self.settings.key {
            HashKey::Node => return self.settings.node_hash,
            // nginx's $remote_addr: the bare IP text.
            HashKey::RemoteAddr => write!(cur, "{}", peer.ip()),
            HashKey::Connection => write!(cur, "{peer}"),
        };
        let n = cur.position() as usize;
        ring::hash_key(&buf[..n])
    }

    /// The shortest timer a new connection sets: the wheel's tick stays
    /// below it (see `wheel::tick`).
    pub(crate) fn timer_floor(&self) -> Duration {
        let s = &self.settings;
        s.first_byte_timeout
            .map_or(s.connect_timeout, |f| f.min(s.connect_timeout))
    }

    /// Sets every `cplb_upstream_up` to `usable` as `/upstreams` reports
    /// it. Called at scrape time: a passive mark lapses after
    /// `fail_timeout` without any event that could update the gauge.
    pub(crate) fn refresh_up_gauges(&self, now_ms: u64) {
        for u in &self.upstreams {
            let usable = u.state.is_usable(u.policy, now_ms);
            u.state.metrics.up.set(usable as i64);
        }
    }

    /// True if at least one upstream can take new connections now.
    pub(crate) fn any_usable(&self, now_ms: u64) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.state.is_usable(u.policy, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_fail_timeout_saturates_in_the_policy() {
        let mut config = Config::parse(
            "upstreams:\n  - address: a.example:6443\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        // Built in code, past validation: the snapshot must still not truncate.
        config.upstreams[0].fail_timeout = Duration::from_secs(u64::MAX / 1000 + 1);
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let built = Snapshot::build(&config, &mut StateTable::default(), &metrics).unwrap();
        assert_eq!(built.snapshot.upstreams[0].policy.fail_timeout_ms, u64::MAX);
    }

    #[test]
    fn more_upstreams_than_a_ring_holds_is_an_error_and_changes_nothing() {
        let mut config = Config::parse(
            "upstreams:\n  - address: 10.0.0.1:6443\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let mut table = StateTable::default();
        Snapshot::build(&config, &mut table, &metrics).unwrap();
        let before = config.clone();
        // Built in code, past validation's limit.
        let one = config.upstreams[0].clone();
        config.upstreams = (0..=ring::MAX_SERVERS)
            .map(|i| UpstreamConfig {
                address: format!("10.1.{}.{}:6443", i / 250, i % 250),
                ..one.clone()
            })
            .collect();
        let e = Snapshot::build(&config, &mut table, &metrics)
            .err()
            .unwrap();
        assert_eq!(e.given, ring::MAX_SERVERS + 1);
        // The table still holds the one upstream of the last good build.
        let again = Snapshot::build(&before, &mut table, &metrics).unwrap();
        assert!(again.added.is_empty() && again.removed.is_empty());
    }
}
