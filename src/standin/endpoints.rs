//! The stand-in cluster's EndpointSlices: what etcd would hold. Several
//! stand-in API servers share one store, as real masters share etcd. Every
//! change bumps the resourceVersion, is kept in a short history (so a watch
//! can resume from an older version) and is pushed to the open watches.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;

pub use crate::discovery::fold::SERVICE_LABEL;
/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 1000;

/// One change, as a watch streams it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    pub slice: Arc<EndpointSlice>,
}

/// Where a new watch starts.
pub enum WatchStart {
    /// Replays these, then streams live changes.
    Replay(Vec<Change>),
    /// The requested resourceVersion is older than the history.
    Gone,
}

/// A master as the `kubernetes` Service lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Master {
    pub addr: SocketAddr,
    pub ready: bool,
}

struct Inner {
    rv: u64,
    /// Oldest resourceVersion a watch may resume from.
    floor: u64,
    /// Keyed by `namespace/name`.
    slices: BTreeMap<String, Arc<EndpointSlice>>,
    history: VecDeque<Change>,
    watches: Vec<mpsc::UnboundedSender<Change>>,
}

/// A shared handle: clone it into every stand-in and keep one in the test.
#[derive(Clone)]
pub struct EndpointStore {
    inner: Arc<Mutex<Inner>>,
    counts: Arc<Counts>,
    service: Arc<(String, String)>,
    port_name: Arc<str>,
}

#[derive(Default)]
struct Counts {
    lists: AtomicUsize,
    watches: AtomicUsize,
    gone: AtomicUsize,
    /// The API answers 500 to everything (an outage while the masters'
    /// TCP ports still accept).
    api_down: std::sync::atomic::AtomicBool,
    /// Every watch that resumes from a version gets 410 Gone.
    watch_gone: std::sync::atomic::AtomicBool,
    /// Every watch gets 500 (lists still work).
    watch_fails: std::sync::atomic::AtomicBool,
}

impl EndpointStore {
    /// A store for the Service `namespace/name` whose masters serve on the
    /// port named `port_name` (`default/kubernetes`, `https` on a real cluster).
    pub fn new(namespace: &str, name: &str, port_name: &str) -> EndpointStore {
        EndpointStore {
            inner: Arc::new(Mutex::new(Inner {
                rv: 100,
                floor: 0,
                slices: BTreeMap::new(),
                history: VecDeque::new(),
                watches: Vec::new(),
            })),
            counts: Arc::default(),
            service: Arc::new((namespace.into(), name.into())),
            port_name: port_name.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not take every stand-in down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Lists requests served (a re-list after 410 shows here).
    pub fn lists(&self) -> usize {
        self.counts.lists.load(Ordering::SeqCst)
    }
    pub fn watches(&self) -> usize {
        self.counts.watches.load(Ordering::SeqCst)
    }
    /// Watches refused with 410 Gone.
    pub fn gone(&self) -> usize {
        self.counts.gone.load(Ordering::SeqCst)
    }
    pub fn open_watches(&self) -> usize {
        let mut g = self.lock();
        g.watches.retain(|w| !w.is_closed());
        g.watches.len()
    }

    /// Replaces the Service's masters: one slice per address family and
    /// port (as the EndpointSlice controller splits them), with the events
    /// a real server would send (ADDED, MODIFIED, DELETED).
    pub fn set_masters(&self, masters: &[Master]) {
        let mut want: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        for m in masters {
            let family = if m.addr.is_ipv4() { "IPv4" } else { "IPv6" };
            let name = format!(
                "{}-{}-{}",
                self.service.1,
                family.to_lowercase(),
                m.addr.port()
            );
            let slice = want
                .entry(name.clone())
                .or_insert_with(|| self.slice(&name, family, m.addr.port()));
            slice.endpoints.push(Endpoint {
                addresses: vec![m.addr.ip().to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(m.ready),
                    serving: Some(m.ready),
                    terminating: Some(false),
                }),
                ..Default::default()
            });
        }
        let ns = &self.service.0;
        let mut g = self.lock();
        let stale: Vec<String> = g
            .slices
            .iter()
            .filter(|(k, s)| {
                is_service_slice(s, &self.service.1) && !want.contains_key(strip_ns(k, ns))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            delete(&mut g, &key);
        }
        for (_, slice) in want {
            put(&mut g, slice);
        }
    }

    /// Stores any slice as it is (a slice of another Service, another port
    /// name): created or replaced.
    pub fn put_slice(&self, slice: EndpointSlice) {
        put(&mut self.lock(), slice);
    }

    pub fn delete_slice(&self, namespace: &str, name: &str) {
        delete(&mut self.lock(), &format!("{namespace}/{name}"));
    }

    /// Takes the API down (every API request gets 500 and open watches
    /// end) or brings it back; `/whoami` and `/readyz` are unaffected.
    pub fn set_api_down(&self, down: bool) {
        self.counts.api_down.store(down, Ordering::SeqCst);
        if down {
            drop(std::mem::take(&mut self.lock().watches));
        }
    }

    pub(crate) fn api_down(&self) -> bool {
        self.counts.api_down.load(Ordering::SeqCst)
    }

    /// Misbehaves (or stops): every watch that resumes from a
    /// resourceVersion, as clients do after a list, gets 410 Gone, however
    /// fresh the version. A client without backoff relists in a loop.
    pub fn set_watch_gone(&self, on: bool) {
        self.counts.watch_gone.store(on, Ordering::SeqCst);
    }

    /// Misbehaves (or stops): every watch gets HTTP 500 at once, while
    /// lists work, so a client's watch fails right after its list.
    pub fn set_watch_fails(&self, on: bool) {
        self.counts.watch_fails.store(on, Ordering::SeqCst);
    }

    pub(crate) fn watch_fails(&self) -> bool {
        self.counts.watch_fails.load(Ordering::SeqCst)
    }

    /// A watch refused before it reached the store still counts.
    pub(crate) fn count_watch(&self) {
        self.counts.watches.fetch_add(1, Ordering::SeqCst);
    }

    /// Loses history, as etcd compaction does, and ends the open watches
    /// (as their timeout would): a client resuming from the version it
    /// saw gets 410 Gone and must list again. `change` is applied in the
    /// same step and never streamed: only that list shows it.
    pub fn compact_with(&self, change: impl FnOnce(&EndpointStore)) {
        // Dropping the senders ends the streams once they are drained.
        drop(std::mem::take(&mut self.lock().watches));
        change(self);
        let mut g = self.lock();
        g.floor = g.rv;
        g.history.clear();
    }

    /// Current slices of `namespace` (all namespaces when `None`).
    pub(crate) fn list(&self, namespace: Option<&str>) -> (u64, Vec<Arc<EndpointSlice>>) {
        self.counts.lists.fetch_add(1, Ordering::SeqCst);
        let g = self.lock();
        let items = g
            .slices
            .values()
            .filter(|s| namespace.is_none() || s.metadata.namespace.as_deref() == namespace)
            .cloned()
            .collect();
        (g.rv, items)
    }

    pub fn get_slice(&self, namespace: &str, name: &str) -> Option<Arc<EndpointSlice>> {
        self.lock()
            .slices
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Opens a watch from `from` (None: now, with the current slices as
    /// ADDED). Registering and reading history happen under one lock, so
    /// no change falls between them.
    pub(crate) fn watch(
        &self,
        from: Option<u64>,
    ) -> (WatchStart, u64, mpsc::UnboundedReceiver<Change>) {
        self.counts.watches.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = self.lock();
        let start = match from {
            None => WatchStart::Replay(
                g.slices
                    .values()
                    .map(|s| Change {
                        rv: g.rv,
                        kind: "ADDED",
                        slice: s.clone(),
                    })
                    .collect(),
            ),
            Some(rv) if rv < g.floor || self.counts.watch_gone.load(Ordering::SeqCst) => {
                self.counts.gone.fetch_add(1, Ordering::SeqCst);
                WatchStart::Gone
            }
            Some(rv) => {
                WatchStart::Replay(g.history.iter().filter(|c| c.rv > rv).cloned().collect())
            }
        };
        if matches!(start, WatchStart::Replay(_)) {
            g.watches.push(tx);
        }
        (start, g.rv, rx)
    }

    fn slice(&self, name: &str, family: &str, port: u16) -> EndpointSlice {
        EndpointSlice {
            address_type: family.into(),
            endpoints: Vec::new(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.service.0.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_string(),
                    self.service.1.clone(),
                )])),
                ..Default::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some(self.port_name.to_string()),
                port: Some(i32::from(port)),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }
}

fn strip_ns<'a>(key: &'a str, ns: &str) -> &'a str {
    key.strip_prefix(ns)
        .and_then(|k| k.strip_prefix('/'))
        .unwrap_or(key)
}

fn is_service_slice(s: &EndpointSlice, service: &str) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .is_some_and(|v| v == service)
}

fn put(g: &mut Inner, mut slice: EndpointSlice) {
    let key = format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        slice.metadata.name.as_deref().unwrap_or("")
    );
    if let Some(old) = g.slices.get(&key)
        && old.endpoints == slice.endpoints
        && old.ports == slice.ports
        && old.metadata.labels == slice.metadata.labels
    {
        return;
    }
    g.rv += 1;
    slice.metadata.resource_version = Some(g.rv.to_string());
    let kind = if g.slices.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    let slice = Arc::new(slice);
    g.slices.insert(key, slice.clone());
    record(g, kind, slice);
}

fn delete(g: &mut Inner, key: &str) {
    let Some(old) = g.slices.remove(key) else {
        return;
    };
    g.rv += 1;
    let mut gone = (*old).clone();
    gone.metadata.resource_version = Some(g.rv.to_string());
    record(g, "DELETED", Arc::new(gone));
}

fn record(g: &mut Inner, kind: &'static str, slice: Arc<EndpointSlice>) {
    let change = Change {
        rv: g.rv,
        kind,
        slice,
    };
    if g.history.len() == HISTORY
        && let Some(old) = g.history.pop_front()
    {
        g.floor = old.rv;
    }
    g.history.push_back(change.clone());
    g.watches.retain(|w| w.send(change.clone()).is_ok());
}
