//! cplb's own listening sockets, so it never dials itself: an upstream
//! whose address is one of them would make every client connection a loop
//! of proxied connections to cplb, until `max_connections` (a typo in the
//! config, `listen: 0.0.0.0:8443` with the node's own address listed, an
//! EndpointSlice listing this very host).
//!
//! A listen on a wildcard address (`0.0.0.0`, `[::]`) receives the
//! connections to every address of the host at its port: the host's
//! addresses are read from its interfaces when the question is asked,
//! which is rare (a config check, a reload, a name resolving).

use std::net::{IpAddr, SocketAddr};

/// The addresses cplb listens on.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnSockets {
    listen: Vec<SocketAddr>,
}

impl OwnSockets {
    /// `listen`: the bound addresses (a port 0 already replaced by the
    /// kernel's choice).
    pub(crate) fn new(listen: Vec<SocketAddr>) -> OwnSockets {
        OwnSockets { listen }
    }

    /// The listen address that receives connections to `addr`, if any.
    pub(crate) fn receiving(&self, addr: SocketAddr) -> Option<SocketAddr> {
        find_receiving(&self.listen, addr, host_addrs)
    }
}

/// The listen address among `listen` that receives connections to `addr`,
/// with `host` giving the host's addresses when a wildcard asks for them.
pub(crate) fn find_receiving(
    listen: &[SocketAddr],
    addr: SocketAddr,
    mut host: impl FnMut() -> Vec<IpAddr>,
) -> Option<SocketAddr> {
    let mut host_addrs: Option<Vec<IpAddr>> = None;
    listen.iter().copied().find(|l| {
        if l.port() != addr.port() || l.is_ipv4() != addr.is_ipv4() {
            // cplb's IPv6 listeners are IPV6_V6ONLY: `[::]` takes no IPv4.
            return false;
        }
        if l.ip() == addr.ip() {
            return true;
        }
        if !l.ip().is_unspecified() {
            return false;
        }
        // Linux routes all of 127.0.0.0/8 to lo, whatever lo lists.
        addr.ip().is_loopback()
            || host_addrs
                .get_or_insert_with(&mut host)
                .contains(&addr.ip())
    })
}

/// The addresses of this host's interfaces; none if they cannot be read.
pub(crate) fn host_addrs() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn no_host() -> Vec<IpAddr> {
        panic!("the host's addresses were read without a wildcard listen")
    }

    #[test]
    fn an_exact_listen_address_is_own() {
        let l = [sa("127.0.0.1:8443"), sa("[::1]:8443")];
        assert_eq!(
            find_receiving(&l, sa("127.0.0.1:8443"), no_host),
            Some(l[0])
        );
        assert_eq!(find_receiving(&l, sa("[::1]:8443"), no_host), Some(l[1]));
        assert_eq!(find_receiving(&l, sa("127.0.0.1:6443"), no_host), None);
        assert_eq!(find_receiving(&l, sa("127.0.0.2:8443"), no_host), None);
    }

    #[test]
    fn a_wildcard_covers_loopback_and_the_hosts_addresses() {
        let l = [sa("0.0.0.0:8443")];
        let host = || vec!["10.0.0.5".parse().unwrap()];
        assert_eq!(find_receiving(&l, sa("127.0.0.9:8443"), host), Some(l[0]));
        assert_eq!(find_receiving(&l, sa("10.0.0.5:8443"), host), Some(l[0]));
        assert_eq!(find_receiving(&l, sa("10.0.0.6:8443"), host), None);
        assert_eq!(find_receiving(&l, sa("10.0.0.5:6443"), host), None);
    }

    /// cplb's `[::]` listeners are IPv6-only, so they take no IPv4 client.
    #[test]
    fn an_ipv6_wildcard_does_not_cover_ipv4() {
        let l = [sa("[::]:8443")];
        let host = || vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(find_receiving(&l, sa("10.0.0.5:8443"), host), None);
        assert_eq!(find_receiving(&l, sa("[fd00::5]:8443"), host), Some(l[0]));
        assert_eq!(find_receiving(&l, sa("[::1]:8443"), host), Some(l[0]));
    }

    #[test]
    fn this_hosts_loopback_is_among_its_addresses() {
        assert!(host_addrs().contains(&"127.0.0.1".parse().unwrap()));
    }
}
