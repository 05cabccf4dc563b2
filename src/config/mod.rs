//! Configuration in two stages: `raw` (serde, `deny_unknown_fields`, defaults)
//! and `validate` (typed, checked values). Only a `Config` reaches the proxy.

mod error;
mod nulls;
pub(crate) mod raw;
mod validate;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use error::ConfigError;
pub(crate) use validate::{DAY, duration_at_most, upstream_settings};

/// Most upstreams a ring holds (see `ring::MAX_SERVERS`); an API server
/// fleet is a handful of machines, so this is never the limit in practice.
pub(crate) const MAX_UPSTREAMS: usize = crate::ring::MAX_SERVERS;
pub(crate) const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; reloads re-read it. `None` for configs built in code.
    pub source: Option<PathBuf>,
    /// The exact text it was parsed from, so a reload can tell a real
    /// change from a touch.
    pub source_text: Option<std::sync::Arc<str>>,
    pub listen: Vec<SocketAddr>,
    pub workers: NonZeroUsize,
    pub backlog: NonZeroU32,
    pub max_connections: NonZeroUsize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a connection waits for its master's first byte after
    /// forwarding the client's first bytes before it hedges to the next
    /// master; `None` (0 in the file) turns hedging off.
    pub first_byte_timeout: Option<Duration>,
    /// TCP_USER_TIMEOUT of upstream sockets: how long sent data may stay
    /// unacknowledged before the kernel drops the connection; `None` (0 in
    /// the file) leaves the kernel's default (about 15 minutes).
    pub tcp_user_timeout: Option<Duration>,
    /// Upstreams tried per client connection; 0 ("all") is `usize::MAX`.
    /// The snapshot caps it at the size of the running set, which
    /// discovery may make larger than `upstreams`.
    pub next_upstream_tries: NonZeroUsize,
    pub shutdown_grace: Duration,
    pub hash: HashConfig,
    pub admin: Option<SocketAddr>,
    pub health_check: Option<HealthCheckConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `None`: static upstreams only. With it, `upstreams` is the seed list
    /// (see docs/discovery.md).
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    /// Bringing displaced connections home (docs/failback.md); on by default.
    pub failback: crate::failback::Failback,
    /// Where new connections are balanced: the proxy, or the kernel's
    /// connect hooks (docs/kernel.md). Applied at start-up only.
    pub dataplane: crate::kernel::config::Dataplane,
    /// Naming and limiting local clients (docs/clients.md).
    pub clients: crate::clients::ClientsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// The node identity: one node sticks to one master, nodes spread.
    Node,
    /// nginx's `hash $remote_addr consistent`, bit for bit.
    RemoteAddr,
    /// Client ip:port: spreads the connections of one node.
    Connection,
}

impl HashKey {
    pub fn as_str(self) -> &'static str {
        match self {
            HashKey::Node => "node",
            HashKey::RemoteAddr => "remote_addr",
            HashKey::Connection => "connection",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    pub key: HashKey,
    /// Resolved node identity (config, else $NODE_NAME, else the hostname).
    pub node_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The literal `host:port` text: the upstream's identity, and what the
    /// ketama ring hashes (as nginx does), never the resolved IP.
    pub address: String,
    pub host: String,
    pub port: u16,
    pub weight: NonZeroU32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    pub mode: CheckMode,
    pub path: String,
    pub close_on_down: bool,
    /// How long a draining upstream (it answers, but not ready) keeps its
    /// open connections before they close.
    pub drain_grace: Duration,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::parse(&text, path)?;
        cfg.source = Some(path.to_owned());
        cfg.source_text = Some(text.into());
        Ok(cfg)
    }

    /// Parses and validates YAML text; `path` only labels error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |e: serde_yaml_ng::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: error::yaml_message(&e),
        };
        // First as a plain tree, for the rules serde cannot express: the
        // document is a mapping, and no key is left without a value.
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(parse_err)?;
        match &doc {
            serde_yaml_ng::Value::Mapping(_) => {}
            serde_yaml_ng::Value::Null => {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: "the file has no settings (at least `upstreams:` is required)".into(),
                });
            }
            _ => {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: "expected a mapping of settings (`key: value` lines) at the top level"
                        .into(),
                });
            }
        }
        if let Some((field, reason)) = nulls::find_null(&doc) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                reason,
            });
        }
        let raw: raw::RawConfig = serde_yaml_ng::from_str(text).map_err(parse_err)?;
        validate::validate(raw, path)
    }

    /// `--check`'s look at the names among `upstreams`: refuses one whose
    /// every address is one of cplb's own listen addresses (literal
    /// addresses were checked by `parse`). Blocking name resolution, as
    /// `nginx -t` does; a name that does not resolve now is no error here
    /// (at run time it is retried). At run time such an upstream is never
    /// dialled either (`cplb status` shows it as `self`).
    pub fn check_names_are_not_self(&self, path: &Path) -> Result<(), ConfigError> {
        use std::net::ToSocketAddrs;
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.host.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            let Ok(addrs) = (u.host.as_str(), u.port).to_socket_addrs() else {
                continue;
            };
            let own: Vec<(SocketAddr, Option<SocketAddr>)> = addrs
                .map(|a| {
                    (
                        a,
                        crate::own::find_receiving(&self.listen, a, crate::own::host_addrs),
                    )
                })
                .collect();
            if let Some((addr, Some(l))) = own.first().copied()
                && own.iter().all(|(_, l)| l.is_some())
            {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    field: format!("upstreams[{i}].address"),
                    reason: format!(
                        "'{}' resolves to {}",
                        u.address,
                        validate::self_loop(addr, l)
                    ),
                });
            }
        }
        Ok(())
    }

    /// The fields that only take effect at start-up; a reload that changes
    /// them applies the rest and says a restart is needed.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.listen != new.listen {
            out.push("listen");
        }
        if self.workers != new.workers {
            out.push("workers");
        }
        if self.backlog != new.backlog {
            out.push("backlog");
        }
        if self.admin != new.admin {
            out.push("admin");
        }
        // Attaching or detaching the programs at a reload would have to
        // hand the maps' state between planes; a restart does it cleanly
        // (the pins are adopted, docs/kernel.md).
        if self.dataplane != new.dataplane {
            out.push("dataplane");
        }
        out
    }
}
