//! EndpointSlices to upstream addresses: only ready endpoints, on the port
//! named `port_name`, IPv4 and IPv6 (`[addr]:port`), one set for all the
//! Service's slices. Addresses no API server can have (unspecified,
//! multicast, broadcast, link-local) are refused, with the reason: cplb
//! would dial them, and 0.0.0.0 at its own port is cplb itself. What is
//! kept is bounded ([`MAX_SLICE_ENDPOINTS`], [`MAX_ADDRESSES`],
//! [`MAX_SLICES`]); the rest is counted as over the limit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Addresses read from one slice: the API refuses a slice with more
/// endpoints than this, so more is not a slice it served.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// Addresses published from all the Service's slices together (a ring
/// holds 128 of them): the first in address order, like the ring's cut.
pub const MAX_ADDRESSES: usize = 1024;
/// Slices kept (the EndpointSlice controller puts up to 100 endpoints in
/// each); a slice past this is left out until the next relist. With
/// `MAX_SLICE_ENDPOINTS`, at most 64,000 addresses (2 MB) are held.
pub const MAX_SLICES: usize = 64;

/// The addresses each slice contributes, keyed by `namespace/name`.
#[derive(Debug, Default)]
pub struct Fold {
    port_name: String,
    slices: Slices,
    /// Slices of a relist, applied all at once on `InitDone`.
    pending: Option<Slices>,
}

#[derive(Debug, Default)]
struct Slices {
    parts: BTreeMap<String, Part>,
    /// Addresses of slices left out (past `MAX_SLICES`).
    left_out: usize,
}

/// What one slice contributes.
#[derive(Debug)]
struct Part {
    addrs: Vec<SocketAddr>,
    /// Its addresses past the limits.
    over: usize,
}

impl Slices {
    /// Keeps `all` for the slice `key`, within the limits: of a slice too
    /// large, the first in address order, whatever order the API gave.
    fn put(&mut self, key: String, mut all: Vec<SocketAddr>) {
        all.sort_unstable();
        all.dedup();
        let over = all.len().saturating_sub(MAX_SLICE_ENDPOINTS);
        all.truncate(MAX_SLICE_ENDPOINTS);
        if !self.parts.contains_key(&key) && self.parts.len() >= MAX_SLICES {
            self.left_out = self.left_out.saturating_add(all.len() + over);
            return;
        }
        self.parts.insert(key, Part { addrs: all, over });
    }

    fn over_limit(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.over)
            .fold(self.left_out, usize::saturating_add)
    }
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

/// Why an address an EndpointSlice lists is not dialled: the `reason`
/// label of `cplb_discovery_endpoints_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// 0.0.0.0/8 or `::`: connects to this host (to cplb itself at its
    /// own port), never to a master.
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 169.254.0.0/16 (the cloud metadata address among them) or fe80::/10.
    LinkLocal,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Unspecified,
        Refusal::Multicast,
        Refusal::Broadcast,
        Refusal::LinkLocal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::LinkLocal => "link_local",
        }
    }

    /// Why `ip` may not be an upstream, if it may not. Loopback stays
    /// allowed (single-node clusters, tests). IPv4-mapped IPv6 addresses
    /// are judged as the IPv4 address they carry.
    pub fn of(ip: IpAddr) -> Option<Refusal> {
        match ip.to_canonical() {
            IpAddr::V4(a) if a.octets()[0] == 0 => Some(Refusal::Unspecified),
            IpAddr::V4(a) if a.is_broadcast() => Some(Refusal::Broadcast),
            IpAddr::V4(a) if a.is_multicast() => Some(Refusal::Multicast),
            IpAddr::V4(a) if a.is_link_local() => Some(Refusal::LinkLocal),
            IpAddr::V6(a) if a.is_unspecified() => Some(Refusal::Unspecified),
            IpAddr::V6(a) if a.is_multicast() => Some(Refusal::Multicast),
            IpAddr::V6(a) if a.is_unicast_link_local() => Some(Refusal::LinkLocal),
            _ => None,
        }
    }
}

/// The Service's addresses, split.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Folded {
    /// Sorted, deduplicated `ip:port` text (`[v6]:port`): the upstreams'
    /// identity.
    pub addresses: Vec<String>,
    /// Addresses listed but refused, sorted, deduplicated, with why.
    pub refused: Vec<(SocketAddr, Refusal)>,
    /// Addresses left out past the limits (not deduplicated).
    pub over_limit: usize,
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
        self.pending = Some(Slices::default());
    }

    pub fn init_apply(&mut self, s: &EndpointSlice) {
        let addrs = addresses(s, &self.port_name);
        self.pending
            .get_or_insert_with(Slices::default)
            .put(key(s), addrs);
    }

    /// The relist is complete: it replaces what was known.
    pub fn init_done(&mut self) {
        if let Some(p) = self.pending.take() {
            self.slices = p;
        }
    }

    pub fn apply(&mut self, s: &EndpointSlice) {
        self.slices.put(key(s), addresses(s, &self.port_name));
    }

    pub fn delete(&mut self, s: &EndpointSlice) {
        self.slices.parts.remove(&key(s));
    }

    /// Every ready address on the port, split into those to dial and
    /// those refused.
    pub fn current(&self) -> Folded {
        let set: BTreeSet<SocketAddr> = self
            .slices
            .parts
            .values()
            .flat_map(|p| p.addrs.iter().copied())
            .collect();
        let mut out = Folded {
            over_limit: self.slices.over_limit(),
            ..Folded::default()
        };
        for a in set {
            match Refusal::of(a.ip()) {
                Some(r) => out.refused.push((a, r)),
                None if out.addresses.len() == MAX_ADDRESSES => out.over_limit += 1,
                None => out.addresses.push(a.to_string()),
            }
        }
        out
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
            f.current().addresses,
            ["10.0.0.1:6443", "10.0.0.2:6443", "[fd00::1]:6443"]
        );
        f.delete(&slice("v6", "IPv6", ("https", 6443), &[]));
        assert_eq!(f.current().addresses, ["10.0.0.1:6443", "10.0.0.2:6443"]);
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
        assert_eq!(
            f.current().addresses,
            ["10.0.0.1:6443"],
            "nothing changes mid-relist"
        );
        f.init_done();
        assert_eq!(f.current().addresses, ["10.0.0.2:6443"]);
    }

    #[test]
    fn addresses_no_master_can_have_are_refused_with_the_reason() {
        use Refusal::*;
        let cases: [(Option<Refusal>, &[&str]); 5] = [
            (
                Some(Unspecified),
                &["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"],
            ),
            (
                Some(Multicast),
                &["224.0.0.1", "239.255.255.250", "ff02::1"],
            ),
            (Some(Broadcast), &["255.255.255.255"]),
            (
                Some(LinkLocal),
                &[
                    "169.254.169.254",
                    "169.254.0.1",
                    "::ffff:169.254.169.254",
                    "fe80::1",
                    "febf::1",
                ],
            ),
            // Allowed: loopback (single-node clusters), private, public.
            (
                None,
                &[
                    "127.0.0.1",
                    "::1",
                    "10.0.0.1",
                    "192.168.1.1",
                    "169.255.0.1",
                    "fec0::1",
                    "fd00::1",
                    "2001:db8::1",
                    "1.1.1.1",
                ],
            ),
        ];
        for (want, texts) in cases {
            for text in texts {
                assert_eq!(Refusal::of(text.parse().unwrap()), want, "{text}");
            }
        }
        let ready = |ips: &[&'static str]| -> Vec<(&'static str, Option<bool>)> {
            ips.iter().map(|ip| (*ip, Some(true))).collect()
        };
        let mut f = Fold::new("https");
        let v4 = [
            "10.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
        ];
        f.apply(&slice("v4", "IPv4", ("https", 6443), &ready(&v4)));
        f.apply(&slice(
            "v6",
            "IPv6",
            ("https", 6443),
            &ready(&["fe80::1", "fd00::1"]),
        ));
        let got = f.current();
        assert_eq!(got.addresses, ["10.0.0.1:6443", "[fd00::1]:6443"]);
        let refused: Vec<(String, &str)> = got
            .refused
            .iter()
            .map(|(a, r)| (a.to_string(), r.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                ("0.0.0.0:6443".to_string(), "unspecified"),
                ("169.254.169.254:6443".to_string(), "link_local"),
                ("224.0.0.1:6443".to_string(), "multicast"),
                ("255.255.255.255:6443".to_string(), "broadcast"),
                ("[fe80::1]:6443".to_string(), "link_local"),
            ]
        );
    }

    /// A slice named `name` with `n` ready endpoints 10.x.y.z.
    fn big(name: &str, first: usize, n: usize) -> EndpointSlice {
        let ips: Vec<String> = (first..first + n)
            .map(|i| format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256))
            .collect();
        let eps: Vec<(&str, Option<bool>)> = ips.iter().map(|ip| (ip.as_str(), None)).collect();
        slice(name, "IPv4", ("https", 6443), &eps)
    }

    #[test]
    fn what_is_kept_is_bounded_and_the_rest_counted() {
        let mut f = Fold::new("https");
        // One slice past the API's own limit, listed in reverse: the first
        // in address order are kept.
        let mut a = big("a", 0, MAX_SLICE_ENDPOINTS + 500);
        a.endpoints.reverse();
        f.apply(&a);
        let got = f.current();
        assert_eq!(
            (got.addresses.len(), got.over_limit),
            (MAX_SLICE_ENDPOINTS, 500)
        );
        // Past the total: the first in address order are published.
        f.apply(&big("b", 70_000, 100));
        let got = f.current();
        assert_eq!(got.addresses.len(), MAX_ADDRESSES);
        assert_eq!(
            got.over_limit,
            500 + (MAX_SLICE_ENDPOINTS + 100 - MAX_ADDRESSES)
        );
        assert_eq!(got.addresses[0], "10.0.0.0:6443");
        assert_eq!(got.addresses[MAX_ADDRESSES - 24], "10.1.17.112:6443");
        // Within the limits again once the big slice shrinks.
        f.apply(&big("a", 0, 10));
        let got = f.current();
        assert_eq!((got.addresses.len(), got.over_limit), (110, 0));
        // Past MAX_SLICES, a new slice is left out and counted until a relist.
        f.init();
        for i in 0..MAX_SLICES + 3 {
            f.init_apply(&big(&format!("s{i:04}"), i * 2, 2));
        }
        f.init_done();
        let got = f.current();
        assert_eq!(got.addresses.len(), MAX_SLICES * 2);
        assert_eq!(got.over_limit, 6);
        f.init();
        f.init_apply(&big("one", 0, 1));
        f.init_done();
        assert_eq!(f.current().over_limit, 0);
    }
}
