//! The applied set of upstreams while discovery is on: which addresses,
//! where each came from, and which are draining. Pure bookkeeping, no I/O:
//! the reloader asks it for the upstream list to build a snapshot from.
//!
//! Rules (issue 11): an empty list is never applied; additions apply at
//! once; an address gone from the API turns draining and is removed only
//! `remove_after` later; one that comes back before then is restored as it
//! was (same literal address, so the same health state and connections).
//! A snapshot gets at most as many as the ring holds (`entries`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, UpstreamConfig};
use crate::discovery::DiscoveryConfig;
use crate::ring::MAX_SERVERS;
use crate::snapshot::{Entry, Source};

/// One member of the applied set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) source: Source,
    /// Since when it is draining; `None` while listed.
    pub(crate) draining_since: Option<Instant>,
}

/// Most members kept: as many as the API may list (`fold::MAX_ADDRESSES`)
/// and as many draining.
const MAX_MEMBERS: usize = 2 * crate::discovery::fold::MAX_ADDRESSES;

#[derive(Debug, Default)]
pub(crate) struct Applied {
    members: BTreeMap<String, Member>,
    /// Static seeds carry their own settings (a seed may be a host name).
    seeds: Vec<UpstreamConfig>,
}

impl Applied {
    /// The seed list: the config's static upstreams.
    pub(crate) fn seed(config: &Config) -> Applied {
        let members = config
            .upstreams
            .iter()
            .map(|u| (u.address.clone(), listed(Source::Static)))
            .collect();
        Applied {
            members,
            seeds: config.upstreams.clone(),
        }
    }

    /// The state file's list (already validated: non-empty, `ip:port`).
    pub(crate) fn from_state(config: &Config, addresses: &[String]) -> Applied {
        Applied {
            members: addresses
                .iter()
                .map(|a| (a.clone(), listed(Source::State)))
                .collect(),
            seeds: config.upstreams.clone(),
        }
    }

    /// A reload changed the static list: seeds still applied take their
    /// new settings.
    pub(crate) fn set_seeds(&mut self, config: &Config) {
        self.seeds = config.upstreams.clone();
    }

    /// True while nothing but the seeds is applied (neither the state file
    /// nor the API has contributed): a reload's new seeds replace them.
    pub(crate) fn only_seeds(&self) -> bool {
        self.members.values().all(|m| m.source == Source::Static)
    }

    /// Applies a list from the API. Returns whether the set changed. An
    /// empty list changes nothing (the watcher refuses it too).
    pub(crate) fn discovered(&mut self, addresses: &[String], now: Instant) -> bool {
        if addresses.is_empty() {
            return false;
        }
        let mut changed = false;
        for (addr, m) in self.members.iter_mut() {
            let listed_now = addresses.iter().any(|a| a == addr);
            if listed_now {
                // Restored, or seen by the API for the first time.
                if m.draining_since.is_some() || m.source != Source::Api {
                    m.draining_since = None;
                    m.source = Source::Api;
                    changed = true;
                }
            } else if m.draining_since.is_none() {
                m.draining_since = Some(now);
                changed = true;
            }
        }
        for a in addresses {
            if !self.members.contains_key(a) {
                self.members.insert(a.clone(), listed(Source::Api));
                changed = true;
            }
        }
        // An API that lists a new full set every second would otherwise
        // pile up draining members for `remove_after`: the longest
        // draining go first, as they would at their expiry.
        if self.members.len() > MAX_MEMBERS {
            let mut draining: Vec<(Instant, String)> = self
                .members
                .iter()
                .filter_map(|(a, m)| m.draining_since.map(|t| (t, a.clone())))
                .collect();
            draining.sort();
            let excess = self.members.len() - MAX_MEMBERS;
            for (_, a) in draining.into_iter().take(excess) {
                self.members.remove(&a);
            }
            changed = true;
        }
        changed
    }

    /// Removes members that have drained for `remove_after`; returns their
    /// addresses.
    pub(crate) fn expire(&mut self, now: Instant, remove_after: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.draining_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= remove_after)
            })
            .map(|(a, _)| a.clone())
            .collect();
        for a in &gone {
            self.members.remove(a);
        }
        gone
    }

    /// When the next draining member is due for removal.
    pub(crate) fn next_expiry(&self, remove_after: Duration) -> Option<Instant> {
        self.members
            .values()
            .filter_map(|m| m.draining_since)
            .min()
            .map(|t| crate::clock::deadline(t, remove_after))
    }

    /// Listed (not draining) addresses, sorted: what the state file keeps.
    pub(crate) fn listed(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.draining_since.is_none())
            .map(|(a, _)| a.clone())
            .collect()
    }

    pub(crate) fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// The upstreams to build a snapshot from: at most `MAX_SERVERS`, as
    /// many as the ring holds. Listed members come first, then draining
    /// ones, each in address order, so every node that sees the same lists
    /// keeps the same ones; the rest are `dropped`. Seeds keep their
    /// configured settings; the others get `discovery.upstream`.
    pub(crate) fn entries(&self, d: &DiscoveryConfig) -> Capped {
        let listed = self
            .members
            .iter()
            .filter(|(_, m)| m.draining_since.is_none());
        let draining = self
            .members
            .iter()
            .filter(|(_, m)| m.draining_since.is_some());
        let mut entries = Vec::new();
        let mut dropped = Vec::new();
        for (addr, m) in listed.chain(draining) {
            let config = match self.seeds.iter().find(|u| &u.address == addr) {
                Some(u) if m.source == Source::Static => u.clone(),
                _ => match discovered_upstream(addr, d) {
                    Some(u) => u,
                    None => continue,
                },
            };
            if entries.len() == MAX_SERVERS {
                dropped.push(addr.clone());
                continue;
            }
            entries.push(Entry {
                config,
                source: m.source,
                draining: m.draining_since.is_some(),
            });
        }
        Capped { entries, dropped }
    }
}

/// The applied set as a snapshot takes it: within the ring's bound.
#[derive(Debug)]
pub(crate) struct Capped {
    pub(crate) entries: Vec<Entry>,
    /// Members left out, listed ones last.
    pub(crate) dropped: Vec<String>,
}

fn listed(source: Source) -> Member {
    Member {
        source,
        draining_since: None,
    }
}

/// A discovered `ip:port` (or `[v6]:port`) as an upstream. `None` for text
/// that is not one (the fold and the state file only produce valid ones).
fn discovered_upstream(addr: &str, d: &DiscoveryConfig) -> Option<UpstreamConfig> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    Some(UpstreamConfig {
        address: addr.to_string(),
        host: sa.ip().to_string(),
        port: sa.port(),
        weight: d.weight,
        max_fails: d.max_fails,
        fail_timeout: d.fail_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "upstreams:\n  - address: master-1.example:6443\ndiscovery:\n  kubeconfig: /k\n  remove_after: 2s\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn additions_at_once_removals_drain_then_expire() {
        let c = config();
        let d = c.discovery.clone().unwrap();
        let mut a = Applied::seed(&c);
        assert!(a.only_seeds());
        let t0 = Instant::now();
        assert!(a.discovered(&list(&["10.0.0.1:6443", "10.0.0.2:6443"]), t0));
        // The seed is not listed by the API: it drains like any other.
        let e = a.entries(&d).entries;
        assert_eq!(e.len(), 3);
        assert!(
            e.iter()
                .any(|e| e.config.address == "master-1.example:6443" && e.draining)
        );
        assert_eq!(a.listed(), list(&["10.0.0.1:6443", "10.0.0.2:6443"]));
        assert!(!a.discovered(&list(&["10.0.0.1:6443", "10.0.0.2:6443"]), t0));
        let t1 = t0 + Duration::from_secs(1);
        assert!(a.discovered(&list(&["10.0.0.1:6443"]), t1));
        assert_eq!(a.next_expiry(d.remove_after), Some(t0 + d.remove_after));
        // Back within remove_after: restored.
        assert!(a.discovered(&list(&["10.0.0.1:6443", "10.0.0.2:6443"]), t1));
        assert!(a.members()["10.0.0.2:6443"].draining_since.is_none());
        assert_eq!(
            a.expire(t0 + d.remove_after, d.remove_after),
            list(&["master-1.example:6443"])
        );
        assert_eq!(a.next_expiry(d.remove_after), None);
        assert!(
            a.entries(&d)
                .entries
                .iter()
                .all(|e| e.source == Source::Api && !e.draining)
        );
    }

    fn many(prefix: &str, n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n)
            .map(|i| format!("{prefix}.{}.{}:6443", i / 200, i % 200))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn at_most_a_ring_full_listed_first_then_draining_in_address_order() {
        let c = config();
        let d = c.discovery.clone().unwrap();
        let t0 = Instant::now();
        // More listed than a ring holds: the first MAX_SERVERS by address.
        let mut a = Applied::seed(&c);
        let big = many("10.1", MAX_SERVERS + 72);
        a.discovered(&big, t0);
        let got = a.entries(&d);
        assert_eq!(got.entries.len(), MAX_SERVERS);
        let kept: Vec<&str> = got
            .entries
            .iter()
            .map(|e| e.config.address.as_str())
            .collect();
        assert_eq!(
            kept,
            big[..MAX_SERVERS]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        assert!(got.entries.iter().all(|e| !e.draining));
        // 72 listed left out, and the draining seed.
        assert_eq!(got.dropped.len(), 73);
        assert!(got.dropped.contains(&"master-1.example:6443".to_string()));
        // Listed plus draining past the bound: every listed one stays,
        // draining ones fill the rest in address order.
        let mut a = Applied::seed(&c);
        let first = many("10.2", 100);
        let second = many("10.3", 100);
        a.discovered(&first, t0);
        a.discovered(&second, t0 + Duration::from_secs(1));
        let got = a.entries(&d);
        assert_eq!(got.entries.len(), MAX_SERVERS);
        let listed: Vec<&str> = got
            .entries
            .iter()
            .filter(|e| !e.draining)
            .map(|e| e.config.address.as_str())
            .collect();
        assert_eq!(
            listed,
            second.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let draining: Vec<&str> = got
            .entries
            .iter()
            .filter(|e| e.draining)
            .map(|e| e.config.address.as_str())
            .collect();
        assert_eq!(
            draining,
            first[..28].iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(got.dropped.len(), 100 + 1 - 28);
        // Within the bound again once the drained ones expire.
        a.expire(t0 + Duration::from_secs(1) + d.remove_after, d.remove_after);
        let got = a.entries(&d);
        assert_eq!((got.entries.len(), got.dropped.len()), (100, 0));
    }

    #[test]
    fn draining_members_are_bounded_the_longest_draining_go_first() {
        let c = config();
        let mut a = Applied::seed(&c);
        let t0 = Instant::now();
        let lists: Vec<Vec<String>> = (0..4)
            .map(|k| many(&format!("10.{}", 10 + k), MAX_MEMBERS / 2))
            .collect();
        for (k, l) in lists.iter().enumerate() {
            a.discovered(l, t0 + Duration::from_secs(k as u64));
        }
        assert_eq!(a.members().len(), MAX_MEMBERS);
        // The last list is listed, the one before drains; older ones went.
        assert_eq!(a.listed(), lists[3]);
        assert!(
            lists[2]
                .iter()
                .all(|x| a.members()[x].draining_since.is_some())
        );
        assert!(!a.members().contains_key(&lists[1][0]));
    }

    #[test]
    fn an_empty_list_changes_nothing() {
        let c = config();
        let mut a = Applied::from_state(&c, &list(&["10.0.0.9:6443"]));
        assert!(!a.discovered(&[], Instant::now()));
        assert_eq!(a.listed(), list(&["10.0.0.9:6443"]));
        assert_eq!(
            a.entries(c.discovery.as_ref().unwrap()).entries[0].source,
            Source::State
        );
    }
}
