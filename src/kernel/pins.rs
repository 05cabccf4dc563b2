//! Where an instance pins its maps and links: `{bpffs}/cplb/<instance>/`,
//! with `<instance>` derived from its listen addresses, so a restart of the
//! same instance finds its pins and two instances with different listen
//! addresses never share any.
//!
//! ```text
//! {bpffs}/cplb/127-0-0-1_8443-5f1c09a2/
//!     maps/cplb_config, cplb_services, cplb_slots, cplb_backends,
//!          cplb_health, cplb_stats, cplb_conns, cplb_peers
//!     links/sockops, getpeername4, getpeername6, connect4, connect6
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One cplb instance's place on bpffs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    name: String,
    dir: PathBuf,
}

impl Instance {
    /// The instance of these listen addresses (order and duplicates do
    /// not matter).
    pub fn new(bpffs: &Path, listen: &[SocketAddr]) -> Instance {
        let name = name(listen);
        let dir = bpffs.join("cplb").join(&name);
        Instance { name, dir }
    }

    /// Readable (the first listen address) and unique (a crc32 of all);
    /// without a '.', which bpffs refuses in a name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub(crate) fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub(crate) fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub(crate) fn link(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }
}

fn name(listen: &[SocketAddr]) -> String {
    let mut sorted: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    sorted.sort();
    sorted.dedup();
    let all = sorted.join(",");
    let first: String = sorted
        .first()
        .map(String::as_str)
        .unwrap_or("none")
        .chars()
        .filter(|c| *c != '[' && *c != ']')
        // bpffs refuses names with a '.'.
        .map(|c| match c {
            '.' => '-',
            c if c.is_ascii_alphanumeric() => c,
            _ => '_',
        })
        .collect();
    format!("{first}-{:08x}", crc32fast::hash(all.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn same_addresses_same_instance_in_any_order() {
        let a = Instance::new(
            Path::new("/sys/fs/bpf"),
            &addrs(&["127.0.0.1:8443", "[::1]:8443"]),
        );
        let b = Instance::new(
            Path::new("/sys/fs/bpf"),
            &addrs(&["[::1]:8443", "127.0.0.1:8443", "[::1]:8443"]),
        );
        assert_eq!(a, b);
        assert!(a.name().starts_with("127-0-0-1_8443-"), "{}", a.name());
        assert!(!a.name().contains('.'), "bpffs refuses dots: {}", a.name());
        assert_eq!(a.dir(), Path::new("/sys/fs/bpf/cplb").join(a.name()));
    }

    #[test]
    fn different_addresses_never_share() {
        let one = Instance::new(Path::new("/b"), &addrs(&["127.0.0.1:8443"]));
        let two = Instance::new(
            Path::new("/b"),
            &addrs(&["127.0.0.1:8443", "127.0.0.1:9443"]),
        );
        let other = Instance::new(Path::new("/b"), &addrs(&["127.0.0.1:9443"]));
        assert_ne!(one.name(), two.name());
        assert_ne!(one.name(), other.name());
        let six = Instance::new(Path::new("/b"), &addrs(&["[::1]:8443"]));
        assert_eq!(
            &six.name()[..7],
            "__1_844",
            "no slash or bracket: {}",
            six.name()
        );
    }

    #[test]
    fn pins_live_under_the_instance() {
        let i = Instance::new(Path::new("/b"), &addrs(&["127.0.0.1:8443"]));
        assert_eq!(i.map("cplb_conns"), i.dir().join("maps/cplb_conns"));
        assert_eq!(i.link("connect4"), i.dir().join("links/connect4"));
    }
}
