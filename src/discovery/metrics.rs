//! Discovery's metrics, in the proxy's owned registry. The watcher counts
//! in plain atomics (`Stats`, one for the life of the process, so counters
//! never go back across watcher restarts); this collector copies them into
//! Prometheus types at scrape time, so nothing polls.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::Stats;
use super::client::Reason;
use super::fold::Refusal;
use crate::snapshot::Source;

pub(crate) const SOURCES: [Source; 3] = [Source::Static, Source::State, Source::Api];

/// The `reason` of `cplb_discovery_endpoints_refused` for endpoints past
/// the fold's limits (the other reasons are `Refusal`s).
const OVER_LIMIT: &str = "over_limit";

#[derive(Clone)]
pub(crate) struct DiscoveryMetrics {
    /// `cplb_upstreams{source}`: set by whoever applies a set.
    pub(crate) upstreams: IntGaugeVec,
    pub(crate) state_file_write_failures: IntCounter,
    /// `cplb_discovery_endpoints_dropped`: set with each snapshot's set.
    pub(crate) endpoints_dropped: IntGauge,
    pub(crate) stats: Arc<Stats>,
}

struct FromStats {
    stats: Arc<Stats>,
    last_sync: Gauge,
    events: IntCounter,
    errors: IntCounterVec,
    refused: IntGaugeVec,
}

impl Collector for FromStats {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.last_sync.desc();
        d.extend(self.events.desc());
        d.extend(self.errors.desc());
        d.extend(self.refused.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.stats;
        self.last_sync
            .set(s.last_sync.load(Ordering::Relaxed) as f64);
        catch_up(&self.events, s.events.load(Ordering::Relaxed));
        for r in Reason::ALL {
            catch_up(&self.errors.with_label_values(&[r.as_str()]), s.errors(r));
        }
        for r in Refusal::ALL {
            let n = i64::try_from(s.refused(r)).unwrap_or(i64::MAX);
            self.refused.with_label_values(&[r.as_str()]).set(n);
        }
        let n = i64::try_from(s.over_limit()).unwrap_or(i64::MAX);
        self.refused.with_label_values(&[OVER_LIMIT]).set(n);
        let mut out = self.last_sync.collect();
        out.extend(self.events.collect());
        out.extend(self.errors.collect());
        out.extend(self.refused.collect());
        out
    }
}

/// Counters only go up: add what the atomic gained since the last scrape.
fn catch_up(c: &IntCounter, total: u64) {
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}

impl DiscoveryMetrics {
    pub(crate) fn new(r: &Registry) -> prometheus::Result<DiscoveryMetrics> {
        let stats = Arc::new(Stats::default());
        let errors = IntCounterVec::new(
            Opts::new(
                "cplb_discovery_errors_total",
                "Discovery failures, by reason (gone: the API compacted the watch history; a normal relist).",
            ),
            &["reason"],
        )?;
        for reason in Reason::ALL {
            errors.with_label_values(&[reason.as_str()]);
        }
        let refused = IntGaugeVec::new(
            Opts::new(
                "cplb_discovery_endpoints_refused",
                "Endpoints in the API's last list that discovery refuses, by reason (unspecified, multicast, broadcast, link_local: never dialled; over_limit: past 1000 per slice, 64 slices or 1024 in all).",
            ),
            &["reason"],
        )?;
        for r in Refusal::ALL {
            refused.with_label_values(&[r.as_str()]);
        }
        refused.with_label_values(&[OVER_LIMIT]);
        r.register(Box::new(FromStats {
            stats: stats.clone(),
            last_sync: Gauge::new(
                "cplb_discovery_last_sync_timestamp_seconds",
                "Unix time of the last complete list or watch event from the API; 0 = never.",
            )?,
            events: IntCounter::new(
                "cplb_discovery_watch_events_total",
                "EndpointSlice watch events received from the API.",
            )?,
            errors,
            refused,
        }))?;
        let upstreams = IntGaugeVec::new(
            Opts::new(
                "cplb_upstreams",
                "Upstreams in the running set, by source (static: the config file; state: discovery's state file; api: discovery).",
            ),
            &["source"],
        )?;
        r.register(Box::new(upstreams.clone()))?;
        for s in SOURCES {
            upstreams.with_label_values(&[s.as_str()]);
        }
        let state_file_write_failures = IntCounter::new(
            "cplb_discovery_state_file_write_failures_total",
            "Failed writes of discovery's state file (the running set is unaffected).",
        )?;
        r.register(Box::new(state_file_write_failures.clone()))?;
        let endpoints_dropped = IntGauge::new(
            "cplb_discovery_endpoints_dropped",
            format!(
                "Known upstreams (listed by the API or the state file, or draining) left out of the running set because the ring holds at most {}; draining ones go first.",
                crate::ring::MAX_SERVERS
            ),
        )?;
        r.register(Box::new(endpoints_dropped.clone()))?;
        Ok(DiscoveryMetrics {
            upstreams,
            state_file_write_failures,
            endpoints_dropped,
            stats,
        })
    }

    /// Sets `cplb_upstreams{source}` from a snapshot.
    pub(crate) fn count(&self, snapshot: &crate::snapshot::Snapshot) {
        for s in SOURCES {
            let n = snapshot.upstreams.iter().filter(|u| u.source == s).count();
            self.upstreams
                .with_label_values(&[s.as_str()])
                .set(n as i64);
        }
    }
}
