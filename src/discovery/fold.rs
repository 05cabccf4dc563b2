//! EndpointSlices to upstream addresses: only ready endpoints, on the port
//! named `port_name`, IPv4 and IPv6 (`[addr]:port`), one set for all the
//! Service's slices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// The addresses each slice contributes, keyed by `namespace/name`.
#[derive(Debug, Default)]
pub struct Fold {
    port_name: String,
    slices: BTreeMap<String, Vec<SocketAddr>>,
    /// Slices of a relist, applied all at once on `InitDone`.
    pending: Option<BTreeMap<String, Vec<SocketAddr>>>,
}

fn key(s: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or(""),
        s.metadata.name.as_deref().unwrap_or("")
    )
}

/// The usable addresses of one slice.
pub fn addresses(s: &EndpointSlice, port_name: &str) -> Vec<SocketAddr> {
    if s.address_type != "IPv4" && s.address_type != "IPv6" {
        return Vec::new(); // FQDN slices name no address to dial.
    }
    let Some(port) = s
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    else {
        return Vec::new();
    };
    s.endpoints
        .iter()
        // An absent `ready` means ready (the API's own rule).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

impl Fold {
    pub fn new(port_name: &str) -> Fold {
        Fold {
            port_name: port_name.into(),
            ..Default::default()
        }
    }

    /// A relist starts: slices are gathered until `init_done`.
    pub fn init(&mut self) {
        self.pending = Some(BTreeMap::new());
    }

    pub fn init_apply(&mut self, s: &EndpointSlice) {
        let addrs = addresses(s, &self.port_name);
        self.pending
            .get_or_insert_with(BTreeMap::new)
            .insert(key(s), addrs);
    }

    /// The relist is complete: it replaces what was known.
    pub fn init_done(&mut self) {
        if let Some(p) = self.pending.take() {
            self.slices = p;
        }
    }

    pub fn apply(&mut self, s: &EndpointSlice) {
        self.slices.insert(key(s), addresses(s, &self.port_name));
    }

    pub fn delete(&mut self, s: &EndpointSlice) {
        self.slices.remove(&key(s));
    }

    /// Every usable address, sorted and deduplicated, as `ip:port` text
    /// (`[v6]:port` for IPv6): the upstreams' identity.
    pub fn current(&self) -> Vec<String> {
        let set: BTreeSet<SocketAddr> = self.slices.values().flatten().copied().collect();
        set.iter().map(SocketAddr::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(
        name: &str,
        family: &str,
        port: (&str, i32),
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: family.into(),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn ready_endpoints_on_the_named_port_both_families() {
        let mut f = Fold::new("https");
        f.apply(&slice(
            "v4",
            "IPv4",
            ("https", 6443),
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", None),
                ("10.0.0.3", Some(false)),
            ],
        ));
        f.apply(&slice(
            "v6",
            "IPv6",
            ("https", 6443),
            &[("fd00::1", Some(true))],
        ));
        f.apply(&slice(
            "other-port",
            "IPv4",
            ("metrics", 9090),
            &[("10.0.0.9", Some(true))],
        ));
        assert_eq!(
            f.current(),
            ["10.0.0.1:6443", "10.0.0.2:6443", "[fd00::1]:6443"]
        );
        f.delete(&slice("v6", "IPv6", ("https", 6443), &[]));
        assert_eq!(f.current(), ["10.0.0.1:6443", "10.0.0.2:6443"]);
    }

    #[test]
    fn a_relist_replaces_everything_at_init_done() {
        let mut f = Fold::new("https");
        f.apply(&slice(
            "a",
            "IPv4",
            ("https", 6443),
            &[("10.0.0.1", Some(true))],
        ));
        f.init();
        f.init_apply(&slice(
            "b",
            "IPv4",
            ("https", 6443),
            &[("10.0.0.2", Some(true))],
        ));
        assert_eq!(f.current(), ["10.0.0.1:6443"], "nothing changes mid-relist");
        f.init_done();
        assert_eq!(f.current(), ["10.0.0.2:6443"]);
    }
}
