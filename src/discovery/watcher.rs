//! The discovery loop: watches the Service's EndpointSlices through one
//! upstream at a time (in the order the caller gives, skipping none it
//! did not give), folds them into the set of ready `ip:port` addresses,
//! debounces, and publishes on a `tokio::sync::watch` channel. On any
//! failure it moves to the next upstream, with backoff. It never touches
//! the data plane: the caller decides what to do with a published list.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{self, Reason, describe};
use super::fold::{Fold, Folded, Refusal};
use super::pace::{Debounce, GoneBackoff, jitter};

/// What the loop needs; built from `DiscoveryConfig` by the caller.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub service: String,
    pub port_name: String,
    pub tls_server_name: String,
    /// Quiet time before a change is published (a joining API server adds
    /// and removes itself several times).
    pub debounce: Duration,
    /// The longest a change waits for its publication while changes keep
    /// coming closer together than `debounce`.
    pub debounce_max: Duration,
    /// Between sessions after a failure, and before listing again after a
    /// 410 Gone: doubling from `backoff_min` to `backoff_max`, jittered.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long an upstream may take to deliver the first complete list.
    /// A master that accepts and never answers would otherwise hold
    /// discovery forever (kube sets no read timeout, for the watches' sake).
    pub sync_timeout: Duration,
}

impl Settings {
    pub fn new(c: &super::DiscoveryConfig) -> Settings {
        Settings {
            kubeconfig: c.kubeconfig.clone(),
            namespace: c.namespace.clone(),
            service: c.service.clone(),
            port_name: c.port_name.clone(),
            tls_server_name: c.tls_server_name.clone(),
            debounce: Duration::from_secs(1),
            debounce_max: Duration::from_secs(3),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(15),
        }
    }
}

/// A list the API published.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// Sorted `ip:port` (`[v6]:port`) text: the upstreams' identity.
    pub addresses: Vec<String>,
    /// The upstream that answered.
    pub via: String,
}

/// Counters for the metrics (read by the caller; atomics, no registry here).
#[derive(Debug, Default)]
pub struct Stats {
    /// Watch events received (lists' items included).
    pub events: AtomicU64,
    /// Unix seconds of the last complete list or event from the API; 0 = never.
    pub last_sync: AtomicU64,
    /// Lists published.
    pub published: AtomicU64,
    errors: [AtomicU64; Reason::ALL.len()],
    last_error: Mutex<Option<(Reason, String)>>,
    /// Endpoints of the last list refused, by reason (gauges).
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Endpoints of the last list left out past the fold's limits (gauge).
    over_limit: AtomicU64,
    /// The refused endpoints last logged: one log line per set.
    refused_logged: Mutex<Vec<(SocketAddr, Refusal)>>,
}

impl Stats {
    pub fn errors(&self, r: Reason) -> u64 {
        self.errors[r as usize].load(Ordering::Relaxed)
    }

    fn error(&self, r: Reason) {
        self.errors[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Endpoints of the API's last list refused for `r`.
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }

    /// Endpoints of the API's last list left out past the fold's limits.
    pub fn over_limit(&self) -> u64 {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Records the refused endpoints of a list from the API: the counts
    /// by reason, and a log line when they differ from the last list's,
    /// so a refused address warns once, not on every event.
    fn set_refused(&self, folded: &Folded) {
        let over = folded.over_limit as u64;
        match (self.over_limit.swap(over, Ordering::Relaxed), over) {
            (0, 0) | (1.., 1..) => {}
            (0, n) => tracing::warn!(
                left_out = n,
                "the API lists more endpoints than discovery keeps: at most {} per EndpointSlice, {} slices and {} addresses in all (the first in address order); the rest are left out",
                super::fold::MAX_SLICE_ENDPOINTS,
                super::fold::MAX_SLICES,
                super::fold::MAX_ADDRESSES,
            ),
            (_, 0) => tracing::info!("the API's endpoints are within discovery's limits again"),
        }
        let refused = folded.refused.as_slice();
        for r in Refusal::ALL {
            let n = refused.iter().filter(|(_, x)| *x == r).count();
            self.refused[r as usize].store(n as u64, Ordering::Relaxed);
        }
        let mut logged = self
            .refused_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.as_slice() == refused {
            return;
        }
        if refused.is_empty() {
            tracing::info!("discovery: the API lists no refused endpoint any more");
        } else {
            let named: Vec<String> = refused
                .iter()
                .map(|(a, r)| format!("{a} ({})", r.as_str()))
                .collect();
            tracing::warn!(
                endpoints = super::short_list(&named).as_str(),
                "discovery refuses endpoints the API lists: cplb never dials unspecified, multicast, broadcast or link-local addresses"
            );
        }
        *logged = refused.to_vec();
    }

    /// The last failure, as logged: names the upstream and the cause.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, m)| m.clone())
    }

    /// Records the current failure (`None`: working). True when the state
    /// changed: working to failing, or to another reason. The text alone
    /// changes with every upstream tried, so it does not count.
    fn set_last_error(&self, e: Option<(Reason, String)>) -> bool {
        let mut g = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let changed = g.as_ref().map(|(r, _)| *r) != e.as_ref().map(|(r, _)| *r);
        *g = e;
        changed
    }

    fn synced(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_sync.store(now, Ordering::Relaxed);
    }
}

enum Ended {
    Stopped,
    Failed {
        reason: Reason,
        message: String,
        synced: bool,
    },
}

/// Runs until `stop`. `candidates` is asked for the upstreams to dial, in
/// order (the ring order of this node, usable ones first) each round.
pub async fn run(
    settings: Settings,
    candidates: impl Fn() -> Vec<String>,
    out: watch::Sender<Option<Discovered>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let base = match client::load(&settings.kubeconfig).await {
            Ok(b) => Some(b),
            Err(e) => {
                fail(&stats, Reason::Kubeconfig, describe(&e));
                None
            }
        };
        let list = if base.is_some() {
            candidates()
        } else {
            Vec::new()
        };
        for upstream in &list {
            let Some(base) = &base else { break };
            match session(&settings, base, upstream, &out, &stats, &stop).await {
                Ended::Stopped => return,
                Ended::Failed {
                    reason,
                    message,
                    synced,
                } => {
                    fail(&stats, reason, format!("{upstream}: {message}"));
                    failures = if synced {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                }
            }
            if sleep_or_stop(backoff(&settings, failures), &stop).await {
                return;
            }
        }
        if list.is_empty() {
            failures = failures.saturating_add(1);
            if sleep_or_stop(backoff(&settings, failures), &stop).await {
                return;
            }
        }
    }
}

fn backoff(s: &Settings, failures: u32) -> Duration {
    if failures == 0 {
        return s.backoff_min;
    }
    s.backoff_min
        .saturating_mul(1u32 << failures.min(16))
        .min(s.backoff_max)
}

/// Sleeps `d`, jittered so that nodes failing together spread out; true
/// when stopped.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(jitter(d, fastrand::f64())) => false,
    }
}

/// Counts a failure; logs it when its reason differs from the last one, so
/// a persistent failure logs once, not on every retry or upstream.
fn fail(stats: &Stats, reason: Reason, message: String) {
    stats.error(reason);
    if stats.set_last_error(Some((reason, message.clone()))) {
        tracing::warn!(
            reason = reason.as_str(),
            error = message.as_str(),
            "discovery failed; retrying"
        );
    }
}

/// One watch through one upstream, until it fails or `stop`.
async fn session(
    s: &Settings,
    base: &kube::Config,
    upstream: &str,
    out: &watch::Sender<Option<Discovered>>,
    stats: &Stats,
    stop: &CancellationToken,
) -> Ended {
    let client = match client::for_upstream(base, &s.kubeconfig, upstream, &s.tls_server_name) {
        Ok(c) => c,
        Err(e) => {
            return Ended::Failed {
                reason: client::classify(&e),
                message: describe(&e),
                synced: false,
            };
        }
    };
    let api: Api<EndpointSlice> = Api::namespaced(client, &s.namespace);
    let config = watcher::Config::default()
        .labels(&format!("{}={}", super::fold::SERVICE_LABEL, s.service))
        .page_size(super::limit::PAGE_SIZE);
    let mut stream = pin!(watcher::watcher(api, config));
    let mut fold = Fold::new(&s.port_name);
    let mut synced = false;
    let mut debounce = Debounce::new(s.debounce, s.debounce_max);
    let mut gone = GoneBackoff::new(s.backoff_min, s.backoff_max);
    // While set, the stream is not polled: kube's watcher lists again only
    // when asked for its next item.
    let mut resume_at: Option<Instant> = None;
    let sync_by = Instant::now() + s.sync_timeout;
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            _ = tokio::time::sleep_until(sync_by), if !synced => {
                break Ended::Failed {
                    reason: Reason::Timeout,
                    message: format!("no complete list within {:?}", s.sync_timeout),
                    synced,
                };
            }
            _ = until(debounce.due()) => {
                debounce.take();
                publish(fold.current(), upstream, out, stats);
            }
            _ = until(resume_at) => resume_at = None,
            item = stream.next(), if resume_at.is_none() => match item {
                Some(Ok(ev)) => {
                    stats.events.fetch_add(1, Ordering::Relaxed);
                    if matches!(ev, Event::Apply(_) | Event::Delete(_)) {
                        gone.reset();
                    }
                    let changed = match ev {
                        Event::Init => { fold.init(); false }
                        Event::InitApply(sl) => { fold.init_apply(&sl); false }
                        Event::InitDone => {
                            fold.init_done();
                            if !synced && stats.set_last_error(None) {
                                tracing::info!(upstream, "discovery is watching the API");
                            }
                            synced = true;
                            true
                        }
                        Event::Apply(sl) => { fold.apply(&sl); true }
                        Event::Delete(sl) => { fold.delete(&sl); true }
                    };
                    if changed {
                        stats.synced();
                        debounce.changed(Instant::now());
                    }
                }
                Some(Err(e)) => {
                    let reason = client::classify(&e);
                    if reason == Reason::Gone && matches!(e, watcher::Error::WatchError(_)) {
                        // The watch history was compacted: kube's watcher
                        // lists again, a normal resync, but not at once.
                        stats.error(Reason::Gone);
                        let wait = gone.gone(Instant::now(), fastrand::f64());
                        resume_at = Some(crate::clock::deadline(Instant::now(), wait));
                        continue;
                    }
                    break Ended::Failed { reason, message: describe(&e), synced };
                }
                None => break Ended::Failed {
                    reason: Reason::Api,
                    message: "the watch ended".into(),
                    synced,
                },
            }
        }
    };
    // A list that arrived is the API's answer even when its watch then
    // failed (within the quiet time, it would otherwise never be seen).
    if debounce.take() {
        publish(fold.current(), upstream, out, stats);
    }
    ended
}

/// Sleeps until `t`; forever when `None`.
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Publishes the addresses to dial unless there are none (refused: cplb
/// never goes to zero upstreams) or they are unchanged.
fn publish(folded: Folded, upstream: &str, out: &watch::Sender<Option<Discovered>>, stats: &Stats) {
    stats.set_refused(&folded);
    let addresses = folded.addresses;
    if addresses.is_empty() {
        fail(
            stats,
            Reason::Empty,
            format!("{upstream}: the API lists no ready endpoint; keeping the current upstreams"),
        );
        return;
    }
    let same = out
        .borrow()
        .as_ref()
        .is_some_and(|d| d.addresses == addresses);
    if same {
        return;
    }
    tracing::info!(
        count = addresses.len(),
        upstreams = super::short_list(&addresses).as_str(),
        via = upstream,
        "discovery: the API lists new upstreams"
    );
    stats.published.fetch_add(1, Ordering::Relaxed);
    out.send_replace(Some(Discovered {
        addresses,
        via: upstream.into(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_repeated_across_upstreams_is_logged_once() {
        let s = Stats::default();
        assert!(s.set_last_error(Some((Reason::Connect, "a: refused".into()))));
        assert!(!s.set_last_error(Some((Reason::Connect, "b: refused".into()))));
        assert_eq!(s.last_error().as_deref(), Some("b: refused"));
        assert!(s.set_last_error(Some((Reason::Tls, "b: UnknownIssuer".into()))));
        assert!(s.set_last_error(None));
        assert!(!s.set_last_error(None));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut s = Settings::new(&crate::discovery::DiscoveryConfig {
            kubeconfig: "k".into(),
            namespace: "default".into(),
            service: "kubernetes".into(),
            port_name: "https".into(),
            tls_server_name: "kubernetes".into(),
            state_file: "s".into(),
            remove_after: Duration::from_secs(300),
            weight: std::num::NonZeroU32::MIN,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        });
        s.backoff_min = Duration::from_millis(100);
        s.backoff_max = Duration::from_secs(1);
        let got: Vec<u128> = (0..6).map(|f| backoff(&s, f).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }
}
