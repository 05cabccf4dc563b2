//! Stage one of config loading: the YAML document as written, with serde
//! defaults. Nothing here is trusted yet; `validate` turns it into `Config`.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "defaults::listen")]
    pub listen: Listen,
    #[serde(default)]
    pub workers: u64,
    #[serde(default = "defaults::backlog")]
    pub backlog: u64,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u64,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "defaults::first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(default = "defaults::tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    #[serde(default)]
    pub next_upstream_tries: u64,
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub hash: RawHash,
    #[serde(default = "defaults::admin")]
    pub admin: String,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub discovery: Option<crate::discovery::RawDiscovery>,
    #[serde(default)]
    pub failback: crate::failback::config::RawFailback,
    #[serde(default)]
    pub dataplane: crate::kernel::config::RawDataplane,
    #[serde(default)]
    pub clients: crate::clients::config::RawClients,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHash {
    #[serde(default = "defaults::hash_key")]
    pub key: String,
    #[serde(default)]
    pub node_id: String,
}

impl Default for RawHash {
    fn default() -> Self {
        RawHash {
            key: defaults::hash_key(),
            node_id: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub address: String,
    #[serde(default = "defaults::weight")]
    pub weight: i64,
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u64,
    #[serde(default = "defaults::fail_timeout", with = "humantime_serde")]
    pub fail_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(default = "defaults::hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "defaults::hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::hc_rise")]
    pub rise: u64,
    #[serde(default = "defaults::hc_fall")]
    pub fall: u64,
    #[serde(default = "defaults::hc_mode")]
    pub mode: String,
    #[serde(default = "defaults::hc_path")]
    pub path: String,
    #[serde(default = "defaults::close_on_down")]
    pub close_on_down: bool,
    #[serde(default = "defaults::drain_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
    #[serde(default)]
    pub tls: RawTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub ca_file: String,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key_file: String,
}

/// `listen:` takes one address or a list of them. A hand-written visitor
/// instead of `#[serde(untagged)]`, because untagged enums lose the error
/// message ("data did not match any variant").
#[derive(Debug)]
pub(crate) struct Listen(pub Vec<String>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address like 127.0.0.1:8443, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                Ok(Listen(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Defaults are nginx's where nginx has one (see README, "Configuration").
pub(crate) mod defaults {
    use super::Listen;
    use std::time::Duration;

    pub(crate) fn listen() -> Listen {
        Listen(vec!["127.0.0.1:8443".into()])
    }
    /// nginx's NGX_LISTEN_BACKLOG on Linux.
    pub(crate) fn backlog() -> u64 {
        511
    }
    pub(crate) fn max_connections() -> u64 {
        20_000
    }
    /// nginx proxy_connect_timeout default.
    pub(crate) fn connect_timeout() -> Duration {
        Duration::from_secs(60)
    }
    /// nginx proxy_timeout default.
    pub(crate) fn idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    /// A loaded kube-apiserver answers a TLS ClientHello in milliseconds;
    /// one that has not within this is frozen, not busy (docs/configuration.md).
    pub(crate) fn first_byte_timeout() -> Duration {
        Duration::from_secs(2)
    }
    /// Talos KubePrism's choice; under client-go's ~45 s HTTP/2 ping
    /// timeout, so cplb drops a vanished master before the client does.
    pub(crate) fn tcp_user_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(crate) fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub(crate) fn hash_key() -> String {
        "node".into()
    }
    pub(crate) fn admin() -> String {
        "127.0.0.1:8081".into()
    }
    pub(crate) fn weight() -> i64 {
        1
    }
    pub(crate) fn max_fails() -> u64 {
        1
    }
    pub(crate) fn fail_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(crate) fn hc_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(crate) fn hc_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub(crate) fn hc_rise() -> u64 {
        2
    }
    pub(crate) fn hc_fall() -> u64 {
        3
    }
    pub(crate) fn hc_mode() -> String {
        "https".into()
    }
    pub(crate) fn hc_path() -> String {
        "/readyz".into()
    }
    pub(crate) fn close_on_down() -> bool {
        true
    }
    /// Longer than kube-apiserver's default `--shutdown-delay-duration`.
    pub(crate) fn drain_grace() -> Duration {
        Duration::from_secs(60)
    }
}
