//! The named clients: at most `max_names` of them, chosen by activity,
//! and `other`; and the decision for each new connection (limits, fair
//! share). Called by the resolver thread only, once per new connection;
//! `/clients` reads it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{Client, ClientGuard, Over};
use super::config::ClientsConfig;
use super::identity::{Identity, OTHER};
use super::metrics::{ClientMetrics, REFUSE_REASONS};
use super::procs::Visibility;

/// Why a connection was refused, in `REFUSE_REASONS` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    MaxConnections = 0,
    Rate = 1,
    FairShare = 2,
}

/// While a client stays over a limit, one summary line this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(180);
/// A client is back under its limits once it has had no refusal for this
/// long.
const UNDER_AFTER: Duration = Duration::from_secs(60);

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    metrics: ClientMetrics,
    start: Instant,
    pub visibility: Visibility,
}

struct Inner {
    named: HashMap<String, Arc<Client>>,
    other: Arc<Client>,
}

/// What a new connection is: the same for every decision made while
/// the registry is locked.
pub(crate) struct Ask<'a> {
    pub id: &'a Identity,
    pub config: &'a ClientsConfig,
    /// Client connections open now (this one included), and the
    /// process's `max_connections`.
    pub open: usize,
    pub max_connections: usize,
}

impl Registry {
    pub(crate) fn new(metrics: ClientMetrics, visibility: Visibility) -> Registry {
        let now = Instant::now();
        Registry {
            inner: Mutex::new(Inner {
                named: HashMap::new(),
                other: Arc::new(Client::new(OTHER, metrics.series(OTHER), now)),
            }),
            metrics,
            start: now,
            visibility,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_secs()
    }

    /// Every client kept, `other` last.
    pub(crate) fn list(&self) -> Vec<Arc<Client>> {
        let inner = self.lock();
        let mut v: Vec<Arc<Client>> = inner.named.values().cloned().collect();
        v.sort_by(|a, b| b.open().cmp(&a.open()).then_with(|| a.name.cmp(&b.name)));
        v.push(inner.other.clone());
        v
    }

    /// Admits or refuses one new connection of `ask.id`.
    pub(crate) fn admit(&self, ask: &Ask<'_>, now: Instant) -> Result<ClientGuard, Reason> {
        let mut inner = self.lock();
        let name = ask.id.name();
        let client = inner.client(&name, ask.config.max_names, &self.metrics, now);
        let named = !Arc::ptr_eq(&client, &inner.other);
        let decision = if named {
            Self::decide(&inner, &client, ask, now)
        } else {
            Ok(())
        };
        drop(inner);
        let mut book = client.book();
        match decision {
            Err(reason) => {
                client.series.refused[reason as usize].inc();
                log_refusal(&mut book.over, &client.name, reason, now);
                Err(reason)
            }
            Ok(()) => {
                // The episode ends once no refusal came for a while: under
                // a rate limit admissions and refusals alternate.
                if book
                    .over
                    .as_ref()
                    .is_some_and(|o| now.duration_since(o.refused_at) >= UNDER_AFTER)
                    && let Some(over) = book.over.take()
                {
                    tracing::info!(client = %client.name, refused = over.total, "client back under its limits");
                }
                book.count_new(self.second(now), ask.id.pid, now);
                drop(book);
                client.open.fetch_add(1, Ordering::AcqRel);
                Ok(ClientGuard::new(client))
            }
        }
    }

    fn decide(
        inner: &Inner,
        client: &Arc<Client>,
        ask: &Ask<'_>,
        now: Instant,
    ) -> Result<(), Reason> {
        let open = client.open();
        if let Some(limit) = ask.config.limit_for(ask.id) {
            if limit
                .max_connections
                .is_some_and(|max| open >= u64::from(max))
            {
                return Err(Reason::MaxConnections);
            }
            if let Some(rate) = limit.max_new_per_second
                && !client.book().bucket.take(rate, now)
            {
                return Err(Reason::Rate);
            }
        }
        if ask.config.fair_share && fair_share_near(ask.open, ask.max_connections) && open > 0 {
            let top = inner.named.values().map(|c| c.open()).max().unwrap_or(0);
            if open >= top {
                return Err(Reason::FairShare);
            }
        }
        Ok(())
    }
}

/// Fair share: the last quarter of `max_connections` (none below 4) is
/// kept for clients other than the one holding the most; `open` counts
/// the new connection.
pub(crate) fn fair_share_near(open: usize, max_connections: usize) -> bool {
    open > max_connections - max_connections / 4
}

impl Inner {
    /// The client named `name`: kept, else made if there is room, or room
    /// is made by dropping the least recently active client with no open
    /// connection; else `other`.
    fn client(
        &mut self,
        name: &str,
        max: usize,
        metrics: &ClientMetrics,
        now: Instant,
    ) -> Arc<Client> {
        if name == OTHER {
            return self.other.clone();
        }
        if let Some(c) = self.named.get(name) {
            return c.clone();
        }
        while self.named.len() >= max {
            // No connection holds a guard on it: guards are only made on
            // this (the resolver's) thread, under this lock.
            let idle = self
                .named
                .values()
                .filter(|c| c.open() == 0)
                .min_by_key(|c| c.book().last_new)
                .map(|c| c.name.clone());
            let Some(idle) = idle else {
                return self.other.clone();
            };
            self.named.remove(&idle);
            metrics.forget(&idle);
        }
        let c = Arc::new(Client::new(name, metrics.series(name), now));
        self.named.insert(name.to_owned(), c.clone());
        c
    }
}

/// One line when a client first crosses a limit, then a summary every
/// `SUMMARY_EVERY` while it stays over; never one per refusal.
fn log_refusal(over: &mut Option<Over>, name: &str, reason: Reason, now: Instant) {
    let reason = REFUSE_REASONS[reason as usize];
    match over {
        None => {
            tracing::warn!(client = %name, reason, "client over its limit: refusing its new connections");
            *over = Some(Over {
                since_line: 0,
                total: 1,
                line_at: now,
                refused_at: now,
            });
        }
        Some(o) => {
            o.since_line += 1;
            o.total += 1;
            o.refused_at = now;
            if now.duration_since(o.line_at) >= SUMMARY_EVERY {
                tracing::warn!(client = %name, reason, refused = o.since_line, "client still over its limit");
                o.since_line = 0;
                o.line_at = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (Registry, prometheus::Registry) {
        let r = prometheus::Registry::new();
        (
            Registry::new(ClientMetrics::new(&r).unwrap(), Visibility::Full),
            r,
        )
    }

    /// A connection of `id` with `open` open, under `max_connections: 100`.
    fn asking<'a>(id: &'a Identity, config: &'a ClientsConfig, open: usize) -> Ask<'a> {
        Ask {
            id,
            config,
            open,
            max_connections: 100,
        }
    }

    fn id(comm: &str) -> Identity {
        Identity {
            uid: Some(0),
            comm: Some(comm.into()),
            ..Default::default()
        }
    }

    fn series(r: &prometheus::Registry) -> usize {
        r.gather()
            .iter()
            .find(|f| f.name() == "cplb_client_connections")
            .map_or(0, |f| f.get_metric().len())
    }

    #[test]
    fn names_are_bounded_and_idle_ones_make_room() {
        let (reg, prom) = registry();
        let config = ClientsConfig {
            max_names: 3,
            ..Default::default()
        };
        let now = Instant::now();
        let mut held = Vec::new();
        for i in 0..3 {
            let who = id(&format!("p{i}"));
            let ask = asking(&who, &config, 1);
            held.push(reg.admit(&ask, now).unwrap());
        }
        // Full and every one open: the next is `other`.
        let who = id("p3");
        let ask = asking(&who, &config, 1);
        drop(reg.admit(&ask, now).unwrap());
        assert_eq!(reg.list().len(), 4);
        assert_eq!(reg.other_open_total(), 1);
        // One closes: a new name takes its place.
        held.remove(0);
        for i in 10..50 {
            let who = id(&format!("p{i}"));
            let ask = asking(&who, &config, 1);
            drop(reg.admit(&ask, now).unwrap());
            assert!(series(&prom) <= 4, "series: {}", series(&prom));
        }
        assert_eq!(series(&prom), 4);
    }

    #[test]
    fn the_top_holder_is_refused_near_the_limit() {
        let (reg, _) = registry();
        let config = ClientsConfig::default();
        let now = Instant::now();
        let mut held = Vec::new();
        for open in 1..=75 {
            let who = id("hog");
            let ask = asking(&who, &config, open);
            held.push(reg.admit(&ask, now).unwrap());
        }
        let who = id("hog");
        let ask = asking(&who, &config, 76);
        assert_eq!(reg.admit(&ask, now).err(), Some(Reason::FairShare));
        for open in 76..=99 {
            let who = id("small");
            let ask = asking(&who, &config, open);
            held.push(reg.admit(&ask, now).unwrap());
        }
        let off = ClientsConfig {
            fair_share: false,
            ..Default::default()
        };
        let ask = Ask {
            id: &id("hog"),
            config: &off,
            open: 76,
            max_connections: 100,
        };
        assert!(reg.admit(&ask, now).is_ok());
    }

    impl Registry {
        fn other_open_total(&self) -> u64 {
            self.lock().other.series.total.get()
        }
    }
}
