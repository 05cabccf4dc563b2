//! The `discovery:` section: raw as written (serde, unknown keys refused),
//! then validated. Absent means static upstreams only.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::raw::defaults;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub kubeconfig: Option<PathBuf>,
    #[serde(default = "default_service")]
    pub service: String,
    #[serde(default = "default_port_name")]
    pub port_name: String,
    #[serde(default = "default_tls_server_name")]
    pub tls_server_name: String,
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    #[serde(default = "default_remove_after", with = "humantime_serde")]
    pub remove_after: Duration,
    #[serde(default)]
    pub upstream: RawDiscoveredUpstream,
}

/// Settings every discovered upstream gets; defaults as for static ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscoveredUpstream {
    #[serde(default = "defaults::weight")]
    pub weight: i64,
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u64,
    #[serde(default = "defaults::fail_timeout", with = "humantime_serde")]
    pub fail_timeout: Duration,
}

impl Default for RawDiscoveredUpstream {
    fn default() -> Self {
        RawDiscoveredUpstream {
            weight: defaults::weight(),
            max_fails: defaults::max_fails(),
            fail_timeout: defaults::fail_timeout(),
        }
    }
}

fn default_service() -> String {
    "default/kubernetes".into()
}
fn default_port_name() -> String {
    "https".into()
}
/// kubeadm puts `kubernetes` in every API server certificate.
fn default_tls_server_name() -> String {
    "kubernetes".into()
}
fn default_state_file() -> PathBuf {
    "/var/lib/cplb/upstreams.json".into()
}
fn default_remove_after() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    /// The Service name: the value of `kubernetes.io/service-name`.
    pub service: String,
    pub port_name: String,
    pub tls_server_name: String,
    pub state_file: PathBuf,
    pub remove_after: Duration,
    pub weight: NonZeroU32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl DiscoveryConfig {
    /// `namespace/name`, as written in the config and the state file.
    pub fn service_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }
}

impl RawDiscovery {
    /// Checks every field; errors name `discovery.<field>` in `path`.
    pub fn validate(self, path: &Path) -> Result<DiscoveryConfig, ConfigError> {
        let err = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: format!("discovery.{field}"),
            reason,
        };
        let kubeconfig = match self.kubeconfig {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => {
                return Err(err(
                    "kubeconfig",
                    "is required: the kubeconfig of a client allowed to watch EndpointSlices"
                        .into(),
                ));
            }
        };
        let (namespace, service) = self.service.trim().split_once('/').ok_or_else(|| {
            err(
                "service",
                format!(
                    "'{}' is not namespace/name (like default/kubernetes)",
                    self.service
                ),
            )
        })?;
        for (what, v) in [("namespace", namespace), ("name", service)] {
            if !is_dns_label(v) {
                return Err(err(
                    "service",
                    format!(
                        "'{}': the {what} '{v}' is not a DNS label (lowercase letters, digits, '-', at most 63)",
                        self.service
                    ),
                ));
            }
        }
        let port_name = self.port_name.trim().to_string();
        if port_name.is_empty() || port_name.len() > 63 {
            return Err(err(
                "port_name",
                "must be the name of the Service port (like https)".into(),
            ));
        }
        let tls_server_name = self.tls_server_name.trim().to_string();
        if rustls::pki_types::ServerName::try_from(tls_server_name.as_str()).is_err() {
            return Err(err(
                "tls_server_name",
                format!("'{tls_server_name}' is not a DNS name or IP address"),
            ));
        }
        if self.state_file.as_os_str().is_empty() || self.state_file.file_name().is_none() {
            return Err(err(
                "state_file",
                format!("'{}' is not a file path", self.state_file.display()),
            ));
        }
        let u = self.upstream;
        let (weight, max_fails, fail_timeout) = crate::config::upstream_settings(
            path,
            "discovery.upstream.",
            u.weight,
            u.max_fails,
            u.fail_timeout,
        )?;
        let remove_after = crate::config::duration_at_most(
            path,
            "discovery.remove_after",
            self.remove_after,
            crate::config::DAY,
        )?;
        Ok(DiscoveryConfig {
            kubeconfig,
            namespace: namespace.into(),
            service: service.into(),
            port_name,
            tls_server_name,
            state_file: self.state_file,
            remove_after,
            weight,
            max_fails,
            fail_timeout,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_service_split() {
        let yaml = "upstreams:\n  - address: 10.0.0.1:6443\ndiscovery:\n  kubeconfig: /k.conf\n";
        let c = crate::Config::parse(yaml, Path::new("t.yaml")).unwrap();
        let d = c.discovery.unwrap();
        assert_eq!(
            (d.namespace.as_str(), d.service.as_str()),
            ("default", "kubernetes")
        );
        assert_eq!(d.service_ref(), "default/kubernetes");
        assert_eq!(d.port_name, "https");
        assert_eq!(d.tls_server_name, "kubernetes");
        assert_eq!(d.state_file, Path::new("/var/lib/cplb/upstreams.json"));
        assert_eq!(d.remove_after, Duration::from_secs(300));
        assert_eq!((d.weight.get(), d.max_fails), (1, 1));
        assert_eq!(d.fail_timeout, Duration::from_secs(10));
        let c = crate::Config::parse(
            "upstreams:\n  - address: 10.0.0.1:6443\n",
            Path::new("t.yaml"),
        );
        assert!(c.unwrap().discovery.is_none(), "absent means off");
    }
}
