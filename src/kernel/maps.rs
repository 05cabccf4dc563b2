//! The BPF maps' layouts, mirrored from bpf/cplb.bpf.c (`#[repr(C)]`, no
//! implicit padding), their names and sizes, and the address encoding both
//! sides share: IPv6 as is, IPv4 as `::ffff:a.b.c.d`, ports in network
//! order. A unit test checks every size against the C.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Bumped whenever a struct below or a map's type or size changes: a
/// starting cplb replaces pinned maps of another layout (maps.rs, `spec`).
pub(crate) const LAYOUT: u32 = 1;

pub(crate) const MAX_BACKENDS: usize = 256;
pub(crate) const MAX_SERVICE_KEYS: usize = 256;
/// Slots of one service's lookup table, at most.
pub const MAX_SLOTS: usize = 4096;
/// Listen addresses (services) of one instance, at most.
pub const MAX_SERVICES: usize = 8;
/// Regions of `MAX_SLOTS` slots in `cplb_slots`: three per service, so a
/// publish writes a region that no service key points at and that the
/// previous publish did not release either (`plan`).
pub(crate) const REGIONS: usize = 3 * MAX_SERVICES;
/// Backend candidates per slot, in ring-walk order.
pub const CANDIDATES: usize = 4;
pub(crate) const NO_BACKEND: u16 = 0xffff;

pub(crate) const BACKEND_USABLE: u32 = 1;
pub(crate) const BACKEND_RETIRED: u32 = 2;
pub(crate) const CONN_REWRITTEN: u16 = 1;
pub(crate) const CONN_ESTABLISHED: u16 = 2;

pub(crate) const AF_INET: u16 = libc::AF_INET as u16;
pub(crate) const AF_INET6: u16 = libc::AF_INET6 as u16;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConfigValue {
    pub netns_cookie: u64,
    pub cgroup_id: u64,
    pub layout: u32,
    pub pad: u32,
}

/// An address and port as both sides key them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AddrKey {
    /// Network order, as the kernel's `__u32 addr[4]` holds it.
    pub addr: [u8; 16],
    pub port_be: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SvcValue {
    pub base: u32,
    pub slots: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotValue {
    pub cand: [u16; CANDIDATES],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BackendValue {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u16,
    pub flags: u32,
    pub max_fails: u32,
    pub pad: u32,
    pub fail_timeout_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HealthValue {
    pub down_until: u64,
    pub window_start: u64,
    pub fails: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StatsValue {
    pub connects: u64,
    pub failures: u64,
    pub open: i64,
    pub marked_down: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdentValue {
    pub cgroup_id: u64,
    pub at_ns: u64,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub pad: u32,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnValue {
    pub orig_addr: [u8; 16],
    pub orig_port_be: u16,
    pub backend: u16,
    pub home: u16,
    pub flags: u16,
    pub who: IdentValue,
}

// SAFETY: each type is `#[repr(C)]`, made only of integers and integer
// arrays, with every padding byte an explicit field (the size test below
// checks there is none left), so any bit pattern the kernel hands back is a
// valid value and no uninitialised byte is ever passed to the kernel.
unsafe impl aya::Pod for ConfigValue {}
// SAFETY: as above.
unsafe impl aya::Pod for AddrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for SlotValue {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendValue {}
// SAFETY: as above.
unsafe impl aya::Pod for HealthValue {}
// SAFETY: as above.
unsafe impl aya::Pod for StatsValue {}
// SAFETY: as above.
unsafe impl aya::Pod for IdentValue {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnValue {}

impl SlotValue {
    pub(crate) const EMPTY: SlotValue = SlotValue {
        cand: [NO_BACKEND; CANDIDATES],
    };
}

/// One map as the programs declare it: a pinned map is adopted only if it
/// still matches (`loader`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub kind: aya::maps::MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec<K, V>(name: &'static str, kind: aya::maps::MapType, max_entries: usize) -> Spec {
    Spec {
        name,
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries: max_entries as u32,
    }
}

pub(crate) const CONFIG: &str = "cplb_config";
pub(crate) const SERVICES: &str = "cplb_services";
pub(crate) const SLOTS: &str = "cplb_slots";
pub(crate) const BACKENDS: &str = "cplb_backends";
pub(crate) const HEALTH: &str = "cplb_health";
pub(crate) const STATS: &str = "cplb_stats";
pub(crate) const CONNS: &str = "cplb_conns";
pub(crate) const PEERS: &str = "cplb_peers";

/// Above cplb's default `max_connections` (20,000): connections rewritten
/// at once that the programs can remember.
pub(crate) const MAX_CONNS: usize = 32768;
pub(crate) const MAX_PEERS: usize = 8192;

pub(crate) const SPECS: [Spec; 8] = {
    use aya::maps::MapType::*;
    [
        spec::<u32, ConfigValue>(CONFIG, Array, 1),
        spec::<AddrKey, SvcValue>(SERVICES, Hash, MAX_SERVICE_KEYS),
        spec::<u32, SlotValue>(SLOTS, Array, REGIONS * MAX_SLOTS),
        spec::<u32, BackendValue>(BACKENDS, Array, MAX_BACKENDS),
        spec::<u32, HealthValue>(HEALTH, Array, MAX_BACKENDS),
        spec::<u32, StatsValue>(STATS, Array, MAX_BACKENDS),
        spec::<u64, ConnValue>(CONNS, LruHash, MAX_CONNS),
        spec::<AddrKey, IdentValue>(PEERS, LruHash, MAX_PEERS),
    ]
};

/// IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub(crate) fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl AddrKey {
    pub(crate) fn new(sa: SocketAddr) -> AddrKey {
        AddrKey {
            addr: addr16(sa.ip()),
            port_be: sa.port().to_be(),
            pad: 0,
        }
    }
}

/// `addr16`'s inverse: a v4-mapped address reads as IPv4.
pub(crate) fn decode(addr: [u8; 16], port_be: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr);
    let port = u16::from_be(port_be);
    match v6.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
    }
}

impl BackendValue {
    pub(crate) fn socket_addr(&self) -> SocketAddr {
        decode(self.addr, self.port_be)
    }

    pub(crate) fn family_of(ip: IpAddr) -> u16 {
        match ip {
            IpAddr::V4(_) => AF_INET,
            IpAddr::V6(_) => AF_INET6,
        }
    }
}

/// `comm` as text: up to its first NUL, lossy.
pub(crate) fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Whether `ip` is an unspecified (wildcard) address.
pub(crate) fn is_wildcard(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes as clang lays out the structs of bpf/cplb.bpf.c (x86_64 and
    /// the BPF target agree on these: natural alignment, no packing).
    #[test]
    fn sizes_match_the_c_structs() {
        assert_eq!(size_of::<ConfigValue>(), 24);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<SvcValue>(), 8);
        assert_eq!(size_of::<SlotValue>(), 8);
        assert_eq!(size_of::<BackendValue>(), 40);
        assert_eq!(size_of::<HealthValue>(), 24);
        assert_eq!(size_of::<StatsValue>(), 32);
        assert_eq!(size_of::<IdentValue>(), 48);
        assert_eq!(size_of::<ConnValue>(), 72);
    }

    #[test]
    fn v4_is_mapped_and_decodes_back() {
        let sa: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let k = AddrKey::new(sa);
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.addr[12..], &[127, 0, 0, 1]);
        assert_eq!(k.port_be.to_ne_bytes(), 8443u16.to_be_bytes());
        assert_eq!(decode(k.addr, k.port_be), sa);
        let six: SocketAddr = "[2001:db8::1]:6443".parse().unwrap();
        let k = AddrKey::new(six);
        assert_eq!(decode(k.addr, k.port_be), six);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0u8; 16];
        raw[..7].copy_from_slice(b"kubelet");
        assert_eq!(comm(&raw), "kubelet");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }
}
