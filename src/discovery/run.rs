//! Discovery wired into the proxy. The reloader owns a [`Wiring`]: it asks
//! it for the upstream list to build snapshots from, waits on it for
//! discovered lists and drain expiries, and tells it about config reloads.
//! The watcher itself runs as its own task on the control-plane runtime
//! and only publishes lists; it never touches the data plane or health.

use std::future::pending;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::apply::{Applied, Capped};
use super::metrics::DiscoveryMetrics;
use super::state::{self, Loaded};
use super::{Discovered, DiscoveryConfig, Settings};
use crate::config::Config;
use crate::ring::MAX_SERVERS;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::snapshot::{Entry, Source};

pub(crate) struct Wiring {
    metrics: DiscoveryMetrics,
    active: Option<Active>,
    /// Known once the reloader runs; the watcher starts then.
    shared: Option<Arc<Shared>>,
}

struct Active {
    config: DiscoveryConfig,
    applied: Applied,
    watcher: Option<Watcher>,
    /// The list last written to the state file.
    written: Vec<String>,
}

struct Watcher {
    rx: watch::Receiver<Option<Discovered>>,
    stop: CancellationToken,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What woke the reloader.
pub(crate) enum Event {
    Discovered(Discovered),
    /// A draining upstream's `remove_after` is over.
    Expiry,
}

impl Wiring {
    /// At start-up: with discovery on, the state file (if valid and for
    /// this service, and read within `state::READ_TIMEOUT`) is the initial
    /// set, else the static seeds.
    pub(crate) async fn new(config: &Config, metrics: DiscoveryMetrics) -> Wiring {
        let active = match &config.discovery {
            Some(d) => Some(Active::new(config, d).await),
            None => None,
        };
        Wiring {
            active,
            metrics,
            shared: None,
        }
    }

    /// The upstreams a snapshot of `config` gets now: with discovery on,
    /// at most as many as the ring holds (`Applied::entries`).
    pub(crate) fn entries(&self, config: &Config) -> Vec<Entry> {
        let Some(a) = &self.active else {
            self.left_out(&[]);
            return Entry::statics(config);
        };
        let Capped { entries, dropped } = a.applied.entries(&a.config);
        self.left_out(&dropped);
        entries
    }

    /// Sets `cplb_discovery_endpoints_dropped`; logs when the set first
    /// outgrows the ring and when it fits again, not on every change
    /// in between.
    fn left_out(&self, dropped: &[String]) {
        let gauge = &self.metrics.endpoints_dropped;
        let before = gauge.get();
        gauge.set(i64::try_from(dropped.len()).unwrap_or(i64::MAX));
        match (before, dropped.len()) {
            (0, 0) => {}
            (0, n) => tracing::warn!(
                left_out = n,
                max = MAX_SERVERS,
                upstreams = super::short_list(dropped).as_str(),
                "discovery knows more upstreams than the ring holds: draining ones are left out first, then listed ones past the first in address order"
            ),
            (_, 0) => tracing::info!(
                max = MAX_SERVERS,
                "discovery's upstreams fit the ring again: none left out"
            ),
            _ => {}
        }
    }

    /// Starts the watcher (the reloader calls this when it begins to run).
    pub(crate) fn start(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
        self.spawn();
    }

    fn spawn(&mut self) {
        let (Some(shared), Some(a)) = (&self.shared, &mut self.active) else {
            return;
        };
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let shared = shared.clone();
        tokio::spawn(super::run(
            Settings::new(&a.config),
            move || candidates(&shared),
            tx,
            self.metrics.stats.clone(),
            stop.clone(),
        ));
        tracing::info!(
            service = a.config.service_ref().as_str(),
            kubeconfig = %a.config.kubeconfig.display(),
            "discovery started"
        );
        a.watcher = Some(Watcher { rx, stop });
    }

    /// Waits for a discovered list or a drain expiry; never returns while
    /// discovery is off. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Event {
        let Some(a) = &mut self.active else {
            return pending().await;
        };
        let expiry = a.applied.next_expiry(a.config.remove_after);
        let expired = async {
            match expiry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => pending().await,
            }
        };
        let listed = async {
            let Some(w) = &mut a.watcher else {
                return pending().await;
            };
            loop {
                if w.rx.changed().await.is_err() {
                    // The watcher ended (only when stopped): nothing more.
                    return pending().await;
                }
                if let Some(d) = w.rx.borrow_and_update().clone() {
                    return d;
                }
            }
        };
        tokio::select! {
            d = listed => Event::Discovered(d),
            _ = expired => Event::Expiry,
        }
    }

    /// Applies an event to the set. True if a new snapshot is needed.
    pub(crate) fn handle(&mut self, ev: Event) -> bool {
        let Some(a) = &mut self.active else {
            return false;
        };
        let now = Instant::now();
        match ev {
            Event::Discovered(d) => {
                let before: Vec<String> = a.draining();
                let changed = a.applied.discovered(&d.addresses, now);
                let after = a.draining();
                for addr in after.iter().filter(|x| !before.contains(x)) {
                    tracing::info!(
                        upstream = addr.as_str(),
                        remove_after_seconds = a.config.remove_after.as_secs_f64(),
                        "upstream gone from the API: draining (new connections only as a last resort)"
                    );
                }
                for addr in before.iter().filter(|x| !after.contains(x)) {
                    tracing::info!(
                        upstream = addr.as_str(),
                        "upstream listed by the API again: restored"
                    );
                }
                changed
            }
            Event::Expiry => {
                let gone = a.applied.expire(now, a.config.remove_after);
                for addr in &gone {
                    tracing::info!(
                        upstream = addr.as_str(),
                        "drained upstream removed; closing its remaining connections"
                    );
                }
                !gone.is_empty()
            }
        }
    }

    /// A reload changed the config from `old` to `new`: turn discovery on
    /// or off, restart the watcher when its settings changed, and let new
    /// seeds replace old ones while nothing else is known.
    pub(crate) async fn reconfigure(&mut self, old: &Config, new: &Config) {
        match (&mut self.active, &new.discovery) {
            (None, None) => {}
            (Some(_), None) => {
                self.active = None;
                tracing::info!("discovery turned off: static upstreams only");
            }
            (None, Some(d)) => {
                self.active = Some(Active::new(new, d).await);
                self.spawn();
            }
            (Some(a), Some(d)) => {
                let service_changed = a.config.service_ref() != d.service_ref();
                if service_changed || a.applied.only_seeds() {
                    a.applied = Active::initial(new, d).await;
                    a.written.clear();
                } else if old.upstreams != new.upstreams {
                    a.applied.set_seeds(new);
                }
                if a.config != *d {
                    a.config = d.clone();
                    a.watcher = None;
                    self.spawn();
                }
            }
        }
    }

    /// After a snapshot was published: metrics, and the state file when
    /// the listed set changed since the last write.
    pub(crate) async fn published(&mut self, snapshot: &Snapshot) {
        self.metrics.count(snapshot);
        let Some(a) = &mut self.active else { return };
        let from_api = a
            .applied
            .members()
            .values()
            .any(|m| m.source == Source::Api);
        let listed = a.applied.listed();
        if !from_api || listed == a.written {
            return;
        }
        let (path, service) = (a.config.state_file.clone(), a.config.service_ref());
        let addrs = listed.clone();
        let written = tokio::task::spawn_blocking(move || state::write(&path, &service, &addrs))
            .await
            .unwrap_or_else(|e| {
                Err(state::StateError::Write {
                    path: a.config.state_file.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        match written {
            Ok(()) => a.written = listed,
            Err(state::StateError::Write { path, source }) => {
                self.metrics.state_file_write_failures.inc();
                tracing::warn!(
                    state_file = %path.display(),
                    error = %source,
                    "could not write the discovery state file; carrying on with the applied set"
                );
            }
        }
    }

    /// The upstreams' count by source, for the first snapshot.
    pub(crate) fn count(&self, snapshot: &Snapshot) {
        self.metrics.count(snapshot);
    }
}

impl Active {
    async fn new(config: &Config, d: &DiscoveryConfig) -> Active {
        Active {
            config: d.clone(),
            applied: Active::initial(config, d).await,
            watcher: None,
            written: Vec::new(),
        }
    }

    async fn initial(config: &Config, d: &DiscoveryConfig) -> Applied {
        let service = d.service_ref();
        match state::read_within(&d.state_file, &service, state::READ_TIMEOUT).await {
            Loaded::Found(s) => {
                tracing::info!(
                    state_file = %d.state_file.display(),
                    count = s.addresses.len(),
                    upstreams = super::short_list(&s.addresses).as_str(),
                    written_at = s.written_at.as_str(),
                    "starting from discovery's state file"
                );
                Applied::from_state(config, &s.addresses)
            }
            // Ignored files were logged by `read`.
            Loaded::Missing | Loaded::Ignored(_) => Applied::seed(config),
        }
    }

    fn draining(&self) -> Vec<String> {
        self.applied
            .members()
            .iter()
            .filter(|(_, m)| m.draining_since.is_some())
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// Upstreams for the watcher to dial, in this node's ring order: usable
/// and listed first, then draining ones, then those marked down (a last
/// resort: health marks must not leave discovery with nothing to dial).
/// Never cplb's own listen address: the token would go to cplb itself.
fn candidates(shared: &Shared) -> Vec<String> {
    let snap = shared.snapshot.load();
    let now = shared.clock.now_ms();
    let mut ranked: Vec<(u8, String)> = snap
        .ring
        .walk(snap.settings.node_hash)
        .filter(|&i| !snap.upstreams[i].state.is_self())
        .map(|i| {
            let u = &snap.upstreams[i];
            let rank = match (u.state.is_usable(u.policy, now), u.draining) {
                (true, false) => 0,
                (true, true) => 1,
                (false, _) => 2,
            };
            (rank, u.config.address.clone())
        })
        .collect();
    // Stable: ring order within each rank.
    ranked.sort_by_key(|(r, _)| *r);
    ranked.into_iter().map(|(_, a)| a).collect()
}
