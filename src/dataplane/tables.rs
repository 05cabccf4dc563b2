//! The kernel's tables from a snapshot: the same walk the proxy's choice
//! makes (`choice::Choice`), the masters' usability as the proxy sees it.

use std::net::SocketAddr;

use crate::choice::{Choice, Standing};
use crate::config::HashKey;
use crate::kernel::{Backend, CANDIDATES, MAX_SLOTS, Service, Tables};
use crate::ring::hash_key;
use crate::snapshot::Snapshot;

/// The tables, and for each of their masters the snapshot upstream it is
/// (the first one, should two names resolve to one address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Built {
    pub tables: Tables,
    pub upstream_of: Vec<usize>,
}

/// Tables for the listen addresses `listen` from `snap`, at `now_ms`
/// (`Clock`). A master is an upstream's first resolved address; one with
/// none (unresolved, or cplb's own) is never in a slot. A slot lists the
/// choice's walk with every addressed upstream usable, so its first is the
/// home; usability goes in `Backend::usable` (active check up, passive
/// health not holding it down, not draining), which the programs read per
/// connect: a health change is one write, not a new table.
pub(crate) fn build(snap: &Snapshot, listen: &[SocketAddr], now_ms: u64) -> Built {
    let mut backends: Vec<Backend> = Vec::new();
    let mut upstream_of = Vec::new();
    // Ring index -> backend index.
    let mut index: Vec<Option<u16>> = Vec::with_capacity(snap.upstreams.len());
    for (i, u) in snap.upstreams.iter().enumerate() {
        let Some(&addr) = u.state.addrs().first() else {
            index.push(None);
            continue;
        };
        let usable = !u.draining && u.state.is_usable(u.policy, now_ms);
        match backends.iter().position(|b| b.addr == addr) {
            Some(b) => {
                backends[b].usable |= usable;
                index.push(Some(b as u16));
            }
            None => {
                index.push(Some(backends.len() as u16));
                upstream_of.push(i);
                backends.push(Backend {
                    addr,
                    max_fails: u.policy.max_fails,
                    fail_timeout_ms: u.policy.fail_timeout_ms,
                    usable,
                });
            }
        }
    }
    let walk = |hash: u32| -> Vec<u16> {
        let view = |i: usize| match index[i] {
            Some(_) => Standing::Usable,
            None => Standing::Never,
        };
        let mut slot: Vec<u16> = Vec::with_capacity(CANDIDATES);
        for (i, _) in Choice::new(&snap.ring, hash, usize::MAX, view) {
            let b = index[i].expect("the view yields addressed upstreams only");
            if !slot.contains(&b) {
                slot.push(b);
            }
            if slot.len() == CANDIDATES {
                break;
            }
        }
        slot
    };
    let services = listen
        .iter()
        .map(|&l| {
            let slots = if backends.is_empty() {
                Vec::new()
            } else {
                match snap.settings.key {
                    HashKey::Node => vec![walk(snap.settings.node_hash)],
                    // The proxy hashes the client's IP; a local client
                    // connects from the listen address's own (loopback for
                    // a wildcard).
                    HashKey::RemoteAddr => vec![walk(hash_key(client_ip(l).as_bytes()))],
                    // The client's port is not known at connect(): its
                    // hash is uniform, so slot i holds the walk from the
                    // start of its slice of the hash space.
                    HashKey::Connection => {
                        let n = MAX_SLOTS as u64;
                        (0..n).map(|i| walk(((i << 32) / n) as u32)).collect()
                    }
                }
            };
            Service { listen: l, slots }
        })
        .collect();
    Built {
        tables: Tables { services, backends },
        upstream_of,
    }
}

fn client_ip(listen: SocketAddr) -> String {
    let ip = listen.ip();
    if !ip.is_unspecified() {
        return ip.to_string();
    }
    if listen.is_ipv4() {
        "127.0.0.1".into()
    } else {
        "::1".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::Shared;

    const NOW: u64 = 1;

    fn shared(key: &str) -> Shared {
        Shared::for_config(&format!(
            "hash:\n  key: {key}\n  node_id: node-7\nupstreams:\n  - address: 127.0.0.2:6443\n  - address: 127.0.0.3:6443\n  - address: 127.0.0.4:6443\n"
        ))
    }

    fn listen() -> Vec<SocketAddr> {
        vec!["127.0.0.1:8443".parse().unwrap()]
    }

    /// With `node`, one slot: the proxy's walk for the node's hash, its
    /// first the proxy's choice.
    #[test]
    fn node_key_is_the_proxys_walk() {
        let sh = shared("node");
        let snap = sh.snapshot.load();
        let b = build(&snap, &listen(), NOW);
        let slots = &b.tables.services[0].slots;
        assert_eq!(slots.len(), 1);
        let want: Vec<u16> = snap
            .ring
            .walk(snap.settings.node_hash)
            .map(|i| i as u16)
            .collect();
        assert_eq!(slots[0], want);
        assert_eq!(
            Some(slots[0][0] as usize),
            snap.ring.first(snap.settings.node_hash)
        );
        assert!(b.tables.backends.iter().all(|b| b.usable));
        assert_eq!(b.upstream_of, vec![0, 1, 2]);
        assert_eq!(b.tables.validate(), Ok(()));
    }

    /// An upstream marked down stays in the slot (its home) but is not
    /// usable; a draining one likewise.
    #[test]
    fn down_and_draining_are_not_usable() {
        let sh = shared("node");
        let snap = sh.snapshot.load();
        snap.upstreams[1].state.set_active(false, NOW, "test");
        let b = build(&snap, &listen(), NOW);
        assert_eq!(b.tables.services[0].slots[0].len(), 3);
        let usable: Vec<bool> = b.tables.backends.iter().map(|b| b.usable).collect();
        assert_eq!(usable, [true, false, true]);
    }

    /// Unresolved upstreams are never in a slot.
    #[test]
    fn unresolved_is_left_out() {
        let sh = shared("connection");
        let snap = sh.snapshot.load();
        snap.upstreams[0].state.set_addrs(Vec::new());
        let b = build(&snap, &listen(), NOW);
        assert_eq!(b.tables.backends.len(), 2);
        assert_eq!(b.upstream_of, vec![1, 2]);
        let slots = &b.tables.services[0].slots;
        assert_eq!(slots.len(), MAX_SLOTS);
        assert!(slots.iter().all(|s| s.len() == 2));
        assert_eq!(b.tables.validate(), Ok(()));
    }

    /// `remote_addr`: the walk for the local client's IP text, as the
    /// proxy hashes it.
    #[test]
    fn remote_addr_hashes_the_local_client_ip() {
        let sh = shared("remote_addr");
        let snap = sh.snapshot.load();
        let b = build(&snap, &listen(), NOW);
        let h = hash_key(b"127.0.0.1");
        assert_eq!(
            b.tables.services[0].slots[0][0] as usize,
            snap.ring.first(h).unwrap()
        );
    }
}
