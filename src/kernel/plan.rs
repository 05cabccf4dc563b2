//! How a publish changes the maps, as pure code: which stable index each
//! master gets, which region of `cplb_slots` each service's table goes to,
//! and the order of the writes, so that every connect sees a consistent
//! choice:
//! 1. a master new to an index gets zeroed health and counters, then its
//!    address; a master whose settings changed, its new settings;
//! 2. each changed table is written whole into a region no service key
//!    points at, and that was not released by the previous publish (a
//!    connect still reading it finished long ago);
//! 3. the service keys are pointed at their regions (one atomic update
//!    each), and keys no longer wanted are deleted;
//! 4. masters no longer listed are retired last: not usable, address kept,
//!    so a connect that read an old table never sees a half-written one.
//!
//! Indexes are stable for the same address across publishes and restarts
//! (the counters and down marks are per index). A freed index is reused
//! only when no index was never used, oldest freed first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::maps::{
    AddrKey, BACKEND_RETIRED, BACKEND_USABLE, BackendValue, CANDIDATES, MAX_BACKENDS,
    MAX_SERVICE_KEYS, MAX_SLOTS, REGIONS, SlotValue, SvcValue, addr16,
};
use super::tables::{Tables, TablesError, expand};

/// A service key without slots: no region.
const EMPTY: SvcValue = SvcValue {
    base: u32::MAX,
    slots: 0,
};

/// One write, in the order `Plan::ops` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    ResetHealth(u32),
    ResetStats(u32),
    Backend(u32, BackendValue),
    Slots { base: u32, slots: Vec<SlotValue> },
    PutService(AddrKey, SvcValue),
    DeleteService(AddrKey),
}

/// What user space knows of the maps' contents.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// By index; `family == 0` for an index never used.
    pub backends: Vec<BackendValue>,
    /// Retired indexes, oldest first.
    pub freed: VecDeque<u16>,
    pub services: BTreeMap<AddrKey, SvcValue>,
    /// Regions the last publish stopped pointing at.
    pub cooling: BTreeSet<u32>,
    /// The table last written to each region, when known.
    pub written: BTreeMap<u32, Vec<SlotValue>>,
}

impl State {
    /// Rebuilt from the maps' contents (at start-up, adopting pins).
    pub(crate) fn from_maps(
        backends: Vec<BackendValue>,
        services: BTreeMap<AddrKey, SvcValue>,
    ) -> State {
        let freed = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.family != 0 && b.flags & BACKEND_RETIRED != 0)
            .map(|(i, _)| i as u16)
            .collect();
        State {
            backends,
            freed,
            services,
            cooling: BTreeSet::new(),
            written: BTreeMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn empty() -> State {
        State::from_maps(vec![BackendValue::default(); MAX_BACKENDS], BTreeMap::new())
    }

    /// The live (not retired) index of `addr`.
    pub(crate) fn index_of(&self, addr: SocketAddr) -> Option<u16> {
        self.backends
            .iter()
            .position(|b| {
                b.family != 0 && b.flags & BACKEND_RETIRED == 0 && b.socket_addr() == addr
            })
            .map(|i| i as u16)
    }

    fn region_of(base: u32) -> u32 {
        base / MAX_SLOTS as u32
    }
}

/// The writes of one publish and the state after them.
#[derive(Debug)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub next: State,
}

fn value_of(b: &super::tables::Backend) -> BackendValue {
    BackendValue {
        addr: addr16(b.addr.ip()),
        port_be: b.addr.port().to_be(),
        family: BackendValue::family_of(b.addr.ip()),
        flags: if b.usable { BACKEND_USABLE } else { 0 },
        max_fails: b.max_fails,
        pad: 0,
        fail_timeout_ns: b.fail_timeout_ms.saturating_mul(1_000_000),
    }
}

/// Plans the publish of `tables` over `state`, with `local` the host's
/// addresses (for wildcard listen addresses).
pub(crate) fn plan(state: &State, tables: &Tables, local: &[IpAddr]) -> Result<Plan, TablesError> {
    tables.validate()?;
    let mut next = state.clone();
    let mut ops = Vec::new();

    // 1. Masters: stable indexes.
    let mut index = Vec::with_capacity(tables.backends.len());
    let mut taken = BTreeSet::new();
    for b in &tables.backends {
        let want = value_of(b);
        // The same address keeps its index, even retired (revived).
        let found = next
            .backends
            .iter()
            .position(|v| v.family != 0 && v.socket_addr() == b.addr)
            .filter(|&i| !taken.contains(&i));
        let i = match found {
            Some(i) => {
                next.freed.retain(|&f| f as usize != i);
                i
            }
            None => {
                let never = next
                    .backends
                    .iter()
                    .enumerate()
                    .position(|(i, v)| v.family == 0 && !taken.contains(&i));
                let i = match never {
                    Some(i) => i,
                    None => match next.freed.pop_front() {
                        Some(f) => f as usize,
                        None => {
                            return Err(TablesError::TooManyBackends {
                                count: tables.backends.len(),
                                max: MAX_BACKENDS,
                            });
                        }
                    },
                };
                ops.push(Op::ResetHealth(i as u32));
                ops.push(Op::ResetStats(i as u32));
                // Forces the write below.
                next.backends[i] = BackendValue::default();
                i
            }
        };
        taken.insert(i);
        if next.backends[i] != want {
            ops.push(Op::Backend(i as u32, want));
            next.backends[i] = want;
        }
        index.push(i as u16);
    }

    // 2. and 3. Tables and service keys. Wildcards first, so an exact
    // listen address on the same port wins its key.
    let mut order: Vec<_> = tables.services.iter().collect();
    order.sort_by_key(|s| !super::maps::is_wildcard(s.listen.ip()));
    let mut wanted: BTreeMap<AddrKey, (usize, SvcValue)> = BTreeMap::new();
    let live: BTreeSet<u32> = state
        .services
        .values()
        .filter(|v| v.slots > 0)
        .map(|v| State::region_of(v.base))
        .collect();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut puts = Vec::new();
    for (n, s) in order.iter().enumerate() {
        let slots: Vec<SlotValue> = s
            .slots
            .iter()
            .map(|c| {
                let mut v = SlotValue::EMPTY;
                for (k, &b) in c.iter().take(CANDIDATES).enumerate() {
                    v.cand[k] = index[b as usize];
                }
                v
            })
            .collect();
        let keys: Vec<AddrKey> = expand(s.listen, local)
            .into_iter()
            .map(AddrKey::new)
            .collect();
        if slots.is_empty() {
            // Kept as a key without slots: connects go to the proxy, and
            // the programs still record who made them (issue 22).
            for k in keys {
                wanted.insert(k, (n, EMPTY));
            }
            continue;
        }
        // Unchanged and already in place: keep the region.
        let current: BTreeSet<u32> = keys
            .iter()
            .filter_map(|k| state.services.get(k))
            .map(|v| v.base)
            .collect();
        let keep = match current.iter().next() {
            Some(&base)
                if current.len() == 1
                    && !used.contains(&State::region_of(base))
                    && state.written.get(&State::region_of(base)) == Some(&slots) =>
            {
                Some(base)
            }
            _ => None,
        };
        let base = match keep {
            Some(base) => base,
            None => {
                // There is always one when the maps hold what publishes
                // wrote: at most MAX_SERVICES regions are live, as many
                // cooling and as many used, of 3 * MAX_SERVICES.
                let region = (0..REGIONS as u32)
                    .find(|r| !live.contains(r) && !state.cooling.contains(r) && !used.contains(r))
                    .ok_or(TablesError::NoFreeRegion { live: live.len() })?;
                let base = region * MAX_SLOTS as u32;
                ops.push(Op::Slots {
                    base,
                    slots: slots.clone(),
                });
                next.written.insert(region, slots.clone());
                base
            }
        };
        used.insert(State::region_of(base));
        let value = SvcValue {
            base,
            slots: slots.len() as u32,
        };
        for k in keys {
            wanted.insert(k, (n, value));
        }
    }
    if wanted.len() > MAX_SERVICE_KEYS {
        return Err(TablesError::TooManyKeys {
            count: wanted.len(),
        });
    }
    for (k, (_, v)) in &wanted {
        if state.services.get(k) != Some(v) {
            puts.push(Op::PutService(*k, *v));
        }
    }
    ops.extend(puts);
    for k in state.services.keys() {
        if !wanted.contains_key(k) {
            ops.push(Op::DeleteService(*k));
        }
    }
    next.services = wanted.into_iter().map(|(k, (_, v))| (k, v)).collect();
    next.cooling = live.difference(&used).copied().collect();
    for r in &next.cooling {
        next.written.remove(r);
    }

    // 4. Retire what is no longer listed.
    for (i, v) in next.backends.iter_mut().enumerate() {
        if v.family != 0 && v.flags & BACKEND_RETIRED == 0 && !taken.contains(&i) {
            v.flags = BACKEND_RETIRED;
            ops.push(Op::Backend(i as u32, *v));
            next.freed.push_back(i as u16);
        }
    }
    Ok(Plan { ops, next })
}

/// The slot's backends, `NO_BACKEND` dropped (for tests and status).
#[cfg(test)]
pub(crate) fn candidates(s: &SlotValue) -> Vec<u16> {
    use super::maps::NO_BACKEND;
    s.cand
        .iter()
        .copied()
        .filter(|&c| c != NO_BACKEND)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::maps::MAX_SERVICES;
    use super::super::tables::{Backend, Service};
    use super::*;

    fn b(addr: &str) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            max_fails: 2,
            fail_timeout_ms: 1000,
            usable: true,
        }
    }

    fn svc(listen: &str, slots: Vec<Vec<u16>>) -> Service {
        Service {
            listen: listen.parse().unwrap(),
            slots,
        }
    }

    fn tables(backends: &[&str], services: Vec<Service>) -> Tables {
        Tables {
            services,
            backends: backends.iter().map(|a| b(a)).collect(),
        }
    }

    fn position(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn backends_before_slots_before_keys_and_retirement_last() {
        let s0 = State::empty();
        let t = tables(
            &["127.0.0.2:6443", "127.0.0.3:6443"],
            vec![svc("127.0.0.1:8443", vec![vec![1, 0]])],
        );
        let p = plan(&s0, &t, &[]).unwrap();
        let last_backend = p
            .ops
            .iter()
            .rposition(|o| matches!(o, Op::Backend(..)))
            .unwrap();
        let slots = position(&p.ops, |o| matches!(o, Op::Slots { .. }));
        let put = position(&p.ops, |o| matches!(o, Op::PutService(..)));
        assert!(last_backend < slots && slots < put, "{:#?}", p.ops);
        let Op::Slots { slots: written, .. } = &p.ops[slots] else {
            unreachable!()
        };
        assert_eq!(candidates(&written[0]), vec![1, 0]);
        assert_eq!(p.next.index_of("127.0.0.3:6443".parse().unwrap()), Some(1));

        // Drop the first master: the service moves to another region, and
        // the master is retired after the key points there.
        let t2 = tables(
            &["127.0.0.3:6443"],
            vec![svc("127.0.0.1:8443", vec![vec![0]])],
        );
        let p2 = plan(&p.next, &t2, &[]).unwrap();
        let put = position(&p2.ops, |o| matches!(o, Op::PutService(..)));
        let retire = position(
            &p2.ops,
            |o| matches!(o, Op::Backend(0, v) if v.flags == BACKEND_RETIRED),
        );
        assert!(put < retire, "{:#?}", p2.ops);
        assert_eq!(
            p2.next.index_of("127.0.0.3:6443".parse().unwrap()),
            Some(1),
            "a kept master keeps its index"
        );
        let Op::PutService(_, v1) = p.ops[position(&p.ops, |o| matches!(o, Op::PutService(..)))]
        else {
            unreachable!()
        };
        let Op::PutService(_, v2) = p2.ops[put] else {
            unreachable!()
        };
        assert_ne!(v1.base, v2.base, "never rewrites the region in use");
    }

    #[test]
    fn an_unchanged_publish_writes_nothing() {
        let t = tables(
            &["127.0.0.2:6443"],
            vec![svc("127.0.0.1:8443", vec![vec![0]; 16])],
        );
        let p = plan(&State::empty(), &t, &[]).unwrap();
        let again = plan(&p.next, &t, &[]).unwrap();
        assert_eq!(again.ops, vec![]);
    }

    #[test]
    fn a_usable_flip_writes_one_backend() {
        let mut t = tables(
            &["127.0.0.2:6443", "127.0.0.3:6443"],
            vec![svc("127.0.0.1:8443", vec![vec![0, 1]])],
        );
        let p = plan(&State::empty(), &t, &[]).unwrap();
        t.backends[0].usable = false;
        let again = plan(&p.next, &t, &[]).unwrap();
        assert_eq!(again.ops.len(), 1, "{:#?}", again.ops);
        assert!(matches!(again.ops[0], Op::Backend(0, v) if v.flags == 0));
    }

    #[test]
    fn empty_slots_keep_a_key_without_slots_and_a_gone_service_none() {
        let key = AddrKey::new("127.0.0.1:8443".parse().unwrap());
        let t = tables(
            &["127.0.0.2:6443"],
            vec![svc("127.0.0.1:8443", vec![vec![0]])],
        );
        let p = plan(&State::empty(), &t, &[]).unwrap();
        let t2 = tables(&["127.0.0.2:6443"], vec![svc("127.0.0.1:8443", vec![])]);
        let p2 = plan(&p.next, &t2, &[]).unwrap();
        assert_eq!(p2.ops, vec![Op::PutService(key, EMPTY)]);
        assert_eq!(p2.next.cooling.len(), 1, "its region cools");
        let p3 = plan(&p2.next, &tables(&["127.0.0.2:6443"], vec![]), &[]).unwrap();
        assert_eq!(p3.ops, vec![Op::DeleteService(key)]);
        assert!(p3.next.services.is_empty());
    }

    #[test]
    fn freed_indexes_are_reused_last_and_reset() {
        let mut s = State::empty();
        let t = tables(&["127.0.0.2:1"], vec![]);
        s = plan(&s, &t, &[]).unwrap().next;
        // Retire it, then add another master: it gets a never-used index.
        s = plan(&s, &tables(&[], vec![]), &[]).unwrap().next;
        let p = plan(&s, &tables(&["127.0.0.9:1"], vec![]), &[]).unwrap();
        assert_eq!(p.next.index_of("127.0.0.9:1".parse().unwrap()), Some(1));
        // The retired address comes back: same index, counters kept.
        let p = plan(
            &p.next,
            &tables(&["127.0.0.9:1", "127.0.0.2:1"], vec![]),
            &[],
        )
        .unwrap();
        assert_eq!(p.next.index_of("127.0.0.2:1".parse().unwrap()), Some(0));
        assert!(!p.ops.iter().any(|o| matches!(o, Op::ResetStats(_))));

        // Every index used: the oldest freed one is reset and reused.
        let all: Vec<String> = (0..MAX_BACKENDS)
            .map(|i| format!("10.0.{}.{}:1", i / 250, i % 250 + 1))
            .collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let s = plan(&State::empty(), &tables(&refs, vec![]), &[])
            .unwrap()
            .next;
        let s = plan(&s, &tables(&refs[1..], vec![]), &[]).unwrap().next;
        let p = plan(&s, &tables(&["127.0.0.7:1"], vec![]), &[]).unwrap();
        assert_eq!(p.next.index_of("127.0.0.7:1".parse().unwrap()), Some(0));
        assert!(p.ops.contains(&Op::ResetStats(0)) && p.ops.contains(&Op::ResetHealth(0)));
        let too_many: Vec<String> = (0..=MAX_BACKENDS)
            .map(|i| format!("10.1.{}.{}:1", i / 250, i % 250 + 1))
            .collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(matches!(
            plan(&State::empty(), &tables(&refs, vec![]), &[]),
            Err(TablesError::TooManyBackends { .. })
        ));
    }

    #[test]
    fn two_quick_publishes_never_write_a_region_just_released() {
        let mut s = State::empty();
        let mut released_before: BTreeSet<u32> = BTreeSet::new();
        for round in 0..40u16 {
            let t = tables(
                &["127.0.0.2:1", "127.0.0.3:1"],
                (0..MAX_SERVICES as u16)
                    .map(|p| {
                        svc(
                            &format!("127.0.0.1:{}", 9000 + p),
                            vec![vec![round % 2, 1 - round % 2]; 2],
                        )
                    })
                    .collect(),
            );
            let p = plan(&s, &t, &[]).unwrap();
            let live: BTreeSet<u32> = s
                .services
                .values()
                .filter(|v| v.slots > 0)
                .map(|v| v.base)
                .collect();
            for op in &p.ops {
                if let Op::Slots { base, .. } = op {
                    assert!(!live.contains(base), "round {round}: wrote a live region");
                    assert!(
                        !released_before.contains(&(base / MAX_SLOTS as u32)),
                        "round {round}: wrote a region released by the previous publish"
                    );
                }
            }
            released_before = p.next.cooling.clone();
            s = p.next;
        }
    }

    #[test]
    fn wildcards_expand_and_exact_keys_win() {
        let local: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let t = tables(
            &["127.0.0.2:1", "127.0.0.3:1"],
            vec![
                svc("127.0.0.1:8443", vec![vec![1]]),
                svc("0.0.0.0:8443", vec![vec![0]]),
            ],
        );
        let p = plan(&State::empty(), &t, &local).unwrap();
        let exact = p.next.services[&AddrKey::new("127.0.0.1:8443".parse().unwrap())];
        let wild = p.next.services[&AddrKey::new("10.0.0.1:8443".parse().unwrap())];
        assert_ne!(exact.base, wild.base);
        assert_eq!(p.next.services.len(), 2);
        let slots_of = |base: u32| {
            p.ops
                .iter()
                .find_map(|o| match o {
                    Op::Slots { base: b, slots } if *b == base => Some(candidates(&slots[0])),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(slots_of(exact.base), vec![1]);
        assert_eq!(slots_of(wild.base), vec![0]);
    }
}
