//! Prometheus metrics in an owned `Registry` (never the global one), so tests
//! and embedders each get their own. Per-upstream handles are resolved once
//! when an upstream appears (`UpstreamMetrics`); the hot path only does
//! atomic adds on them, never a label lookup.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub const FAILURE_REASONS: [&str; 5] = ["refused", "timeout", "reset", "resolve", "other"];
/// `cplb_health_checks_total{reason}` of a probe that passed.
pub const PROBE_REASON_NONE: &str = "none";

/// `cplb_health_checks_total{reason}` of a failed probe, in
/// `probe::ProbeError::reason_index` order;
/// their series exist at 0 from the start.
pub const PROBE_FAILURE_REASONS: [&str; 8] = [
    "refused",
    "connect",
    "timeout",
    "tls",
    "io",
    "http",
    "status",
    "unresolved",
];

/// `cplb_dataplane_mode{mode}`: the data planes that can be in force.
pub(crate) const DATAPLANE_MODES: [&str; 2] = ["proxy", "kernel"];

/// `cplb_config_reloads_total{result}`; both exist at 0 from start-up so
/// `increase(...) > 0` alerts have a series to watch.
pub(crate) const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    connections_total: IntCounterVec,
    connections_active: IntGaugeVec,
    connections_displaced: IntGaugeVec,
    connect_failures: IntCounterVec,
    upstream_up: IntGaugeVec,
    state_changes: IntCounterVec,
    bytes: IntCounterVec,
    connections_closed: IntCounterVec,
    hedges: IntCounterVec,
    upstream_self: IntGaugeVec,
    pub connect_duration: Histogram,
    pub client_connections_active: IntGauge,
    /// Pre-resolved: rejections come in floods (overload, every master
    /// down), so no label lookup per client.
    pub rejected: Rejected,
    pub all_upstreams_down: IntCounter,
    reloads: IntCounterVec,
    pub last_reload_successful: IntGauge,
    /// 1 while the config file has changes to fields that only apply at
    /// start-up (`listen`, `workers`, `backlog`, `admin`).
    pub restart_needed: IntGauge,
    pub last_reload_success_timestamp: Gauge,
    pub probes: IntCounterVec,
    pub probe_duration: Histogram,
    listen_skipped: IntGaugeVec,
    dataplane_mode: IntGaugeVec,
    /// Per local client (`clients`): at most `max_names` + 1 names.
    pub(crate) clients: crate::clients::metrics::ClientMetrics,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram(r: &Registry, name: &str, help: &str) -> prometheus::Result<Histogram> {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new(registry: Registry) -> prometheus::Result<Metrics> {
        let r = &registry;
        let build_info = gauge_vec(
            r,
            "cplb_build_info",
            "Build information; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let client_connections_active = IntGauge::new(
            "cplb_client_connections_active",
            "Client connections currently open, proxied or still connecting.",
        )?;
        r.register(Box::new(client_connections_active.clone()))?;
        let all_upstreams_down = IntCounter::new(
            "cplb_all_upstreams_down_total",
            "Episodes in which every upstream was unusable and all were tried as a last resort.",
        )?;
        r.register(Box::new(all_upstreams_down.clone()))?;
        let last_reload_successful = IntGauge::new(
            "cplb_config_last_reload_successful",
            "1 if the last configuration reload succeeded, else 0.",
        )?;
        r.register(Box::new(last_reload_successful.clone()))?;
        last_reload_successful.set(1);
        let restart_needed = IntGauge::new(
            "cplb_config_restart_needed",
            "1 if the last reload changed fields that only apply at start-up (listen, workers, backlog, admin): they keep their running values until cplb is restarted; else 0.",
        )?;
        r.register(Box::new(restart_needed.clone()))?;
        let last_reload_success_timestamp = Gauge::new(
            "cplb_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        r.register(Box::new(last_reload_success_timestamp.clone()))?;
        let reloads = counter_vec(
            r,
            "cplb_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        )?;
        for result in RELOAD_RESULTS {
            reloads.with_label_values(&[result]);
        }
        let clients = crate::clients::metrics::ClientMetrics::new(r)?;
        Ok(Metrics {
            clients,
            connections_total: counter_vec(
                r,
                "cplb_connections_total",
                "Client connections proxied to an upstream.",
                &["upstream"],
            )?,
            connections_active: gauge_vec(
                r,
                "cplb_connections_active",
                "Proxied connections currently open, per upstream.",
                &["upstream"],
            )?,
            connections_displaced: gauge_vec(
                r,
                "cplb_connections_displaced",
                "Proxied connections whose home is this upstream (first on their ring walk) but that run on another, because it was unusable when they connected; fail-back closes them at a bounded rate once it is back.",
                &["upstream"],
            )?,
            connect_failures: counter_vec(
                r,
                "cplb_connect_failures_total",
                "Failed connects to an upstream, by reason.",
                &["upstream", "reason"],
            )?,
            upstream_up: gauge_vec(
                r,
                "cplb_upstream_up",
                "1 if a new connection may go to the upstream now (as `usable` in /upstreams): resolved, active check up, no passive mark within fail_timeout; else 0.",
                &["upstream"],
            )?,
            state_changes: counter_vec(
                r,
                "cplb_upstream_state_changes_total",
                "Transitions of an upstream between up and down.",
                &["upstream"],
            )?,
            bytes: counter_vec(
                r,
                "cplb_bytes_total",
                "Bytes proxied, by upstream and direction.",
                &["upstream", "direction"],
            )?,
            connections_closed: counter_vec(
                r,
                "cplb_connections_closed_total",
                "Proxied connections closed by cplb, by reason.",
                &["upstream", "reason"],
            )?,
            hedges: counter_vec(
                r,
                "cplb_hedges_total",
                "Connections whose first flight this upstream did not answer within first_byte_timeout, by what became of the hedge: answered (the next master answered the replayed bytes), failed (no other master connected, or it did not answer either), skipped (over the hedging budget: the connection kept waiting here).",
                &["upstream", "result"],
            )?,
            upstream_self: gauge_vec(
                r,
                "cplb_upstream_self",
                "1 if the upstream's address is one of cplb's own listening sockets (it is never dialled), else 0.",
                &["upstream"],
            )?,
            connect_duration: histogram(
                r,
                "cplb_connect_duration_seconds",
                "Time to establish a connection to an upstream.",
            )?,
            client_connections_active,
            rejected: Rejected::new(&counter_vec(
                r,
                "cplb_client_connections_rejected_total",
                "Client connections closed without being proxied, by reason.",
                &["reason"],
            )?),
            all_upstreams_down,
            reloads,
            last_reload_successful,
            restart_needed,
            last_reload_success_timestamp,
            probes: counter_vec(
                r,
                "cplb_health_checks_total",
                "Active health check probes, by upstream, result and reason (\"none\" for a success; refused, connect, timeout, tls, io, http, status, unresolved for a failure).",
                &["upstream", "result", "reason"],
            )?,
            probe_duration: histogram(
                r,
                "cplb_health_check_duration_seconds",
                "Duration of active health check probes.",
            )?,
            listen_skipped: gauge_vec(
                r,
                "cplb_listen_skipped",
                "1 if this configured listen address was not bound because the node has no IPv6 (loopback IPv6 only), else 0.",
                &["address"],
            )?,
            dataplane_mode: {
                let v = gauge_vec(
                    r,
                    "cplb_dataplane_mode",
                    "1 for the data plane in force (proxy or kernel), else 0.",
                    &["mode"],
                )?;
                for m in DATAPLANE_MODES {
                    v.with_label_values(&[m]).set(0);
                }
                v
            },
            registry,
        })
    }

    /// `cplb_dataplane_mode`: 1 for `kernel` or for `proxy`.
    pub(crate) fn set_dataplane(&self, kernel: bool) {
        for m in DATAPLANE_MODES {
            let on = (m == "kernel") == kernel;
            self.dataplane_mode.with_label_values(&[m]).set(on as i64);
        }
    }

    /// The owned registry, for parts that register their own metrics
    /// (discovery).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything registered. An error (a
    /// malformed family, which cplb's own registrations should never make)
    /// is an error for the scraper too, never a partial or empty 200.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.render_families(&self.registry.gather())
    }

    fn render_families(
        &self,
        families: &[prometheus::proto::MetricFamily],
    ) -> Result<String, prometheus::Error> {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    pub fn reload(&self, result: &str) -> IntCounter {
        self.reloads.with_label_values(&[result])
    }

    /// `cplb_listen_skipped` for a configured `listen` address.
    pub fn listen_skipped(&self, address: &str) -> IntGauge {
        self.listen_skipped.with_label_values(&[address])
    }

    /// The one list of an upstream's series: each family with the label
    /// values that follow `upstream`. `upstream` creates every one of them
    /// (at 0) and `forget_upstream` removes every one, so a series added
    /// here is both initialised and forgotten; `UpstreamMetrics` only takes
    /// handles on series of this list (a unit test checks that nothing is
    /// left behind).
    fn upstream_series(&self, mut each: impl FnMut(Family<'_>, &[&str])) {
        use Family::{Counter, Gauge};
        each(Counter(&self.connections_total), &[]);
        each(Gauge(&self.connections_active), &[]);
        each(Gauge(&self.connections_displaced), &[]);
        each(Gauge(&self.upstream_up), &[]);
        each(Gauge(&self.upstream_self), &[]);
        each(Counter(&self.state_changes), &[]);
        for r in HEDGE_RESULTS {
            each(Counter(&self.hedges), &[r]);
        }
        for d in DIRECTIONS {
            each(Counter(&self.bytes), &[d]);
        }
        for r in FAILURE_REASONS {
            each(Counter(&self.connect_failures), &[r]);
        }
        for r in CLOSE_REASONS {
            each(Counter(&self.connections_closed), &[r]);
        }
        each(Counter(&self.probes), &["success", PROBE_REASON_NONE]);
        for r in PROBE_FAILURE_REASONS {
            each(Counter(&self.probes), &["failure", r]);
        }
    }

    /// Creates every series of `address` at 0 and resolves the handles the
    /// proxy's path uses.
    pub fn upstream(&self, address: &str) -> UpstreamMetrics {
        let a = address;
        self.upstream_series(|family, rest| {
            let labels: Vec<&str> = std::iter::once(a).chain(rest.iter().copied()).collect();
            match family {
                Family::Counter(v) => drop(v.with_label_values(&labels)),
                Family::Gauge(v) => drop(v.with_label_values(&labels)),
            }
        });
        let [to_upstream, to_client] = DIRECTIONS;
        let [
            upstream_down,
            upstream_draining,
            shutdown,
            idle_timeout,
            failback,
            upstream_timeout,
        ] = CLOSE_REASONS;
        UpstreamMetrics {
            connections_total: self.connections_total.with_label_values(&[a]),
            connections_active: self.connections_active.with_label_values(&[a]),
            connections_displaced: self.connections_displaced.with_label_values(&[a]),
            up: self.upstream_up.with_label_values(&[a]),
            is_self: self.upstream_self.with_label_values(&[a]),
            hedges: HEDGE_RESULTS.map(|r| self.hedges.with_label_values(&[a, r])),
            state_changes: self.state_changes.with_label_values(&[a]),
            bytes_to_upstream: self.bytes.with_label_values(&[a, to_upstream]),
            bytes_to_client: self.bytes.with_label_values(&[a, to_client]),
            failures: FAILURE_REASONS.map(|r| self.connect_failures.with_label_values(&[a, r])),
            closed_upstream_down: self
                .connections_closed
                .with_label_values(&[a, upstream_down]),
            closed_upstream_draining: self
                .connections_closed
                .with_label_values(&[a, upstream_draining]),
            closed_shutdown: self.connections_closed.with_label_values(&[a, shutdown]),
            closed_idle: self
                .connections_closed
                .with_label_values(&[a, idle_timeout]),
            closed_failback: self.connections_closed.with_label_values(&[a, failback]),
            closed_upstream_timeout: self
                .connections_closed
                .with_label_values(&[a, upstream_timeout]),
            probe_ok: self
                .probes
                .with_label_values(&[a, "success", PROBE_REASON_NONE]),
            probe_fail: PROBE_FAILURE_REASONS
                .map(|r| self.probes.with_label_values(&[a, "failure", r])),
        }
    }

    /// Drops the series of an upstream a reload removed, so dashboards stop
    /// showing it. Its open connections keep their (now detached) handles.
    pub fn forget_upstream(&self, address: &str) {
        self.upstream_series(|family, rest| {
            let labels: Vec<&str> = std::iter::once(address)
                .chain(rest.iter().copied())
                .collect();
            let _ = match family {
                Family::Counter(v) => v.remove_label_values(&labels),
                Family::Gauge(v) => v.remove_label_values(&labels),
            };
        });
    }
}

/// A metric family with an `upstream` label; see `Metrics::upstream_series`.
enum Family<'a> {
    Counter(&'a IntCounterVec),
    Gauge(&'a IntGaugeVec),
}

/// `cplb_bytes_total{direction}`.
const DIRECTIONS: [&str; 2] = ["to_upstream", "to_client"];
/// `cplb_connections_closed_total{reason}`: closed by cplb, and why.
const CLOSE_REASONS: [&str; 6] = [
    "upstream_down",
    "upstream_draining",
    "shutdown",
    "idle_timeout",
    "failback",
    // The upstream stopped acknowledging for `tcp_user_timeout` (a master
    // that vanished mid-stream): the client is closed so it reconnects.
    "upstream_timeout",
];

/// `cplb_hedges_total{result}`, in `Hedge` order.
pub const HEDGE_RESULTS: [&str; 3] = ["answered", "failed", "skipped"];

/// What became of a hedge away from a silent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hedge {
    /// The next master answered the replayed first flight.
    Answered = 0,
    /// No other master connected, or it did not answer either.
    Failed = 1,
    /// Over the hedging budget: the connection kept waiting.
    Skipped = 2,
}

/// `cplb_client_connections_rejected_total`, one handle per reason.
#[derive(Clone)]
pub struct Rejected {
    pub max_connections: IntCounter,
    pub no_upstream: IntCounter,
    pub accept_error: IntCounter,
}

impl Rejected {
    fn new(v: &IntCounterVec) -> Rejected {
        Rejected {
            max_connections: v.with_label_values(&["max_connections"]),
            no_upstream: v.with_label_values(&["no_upstream"]),
            accept_error: v.with_label_values(&["accept_error"]),
        }
    }
}

/// Pre-resolved handles for one upstream.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub connections_total: IntCounter,
    pub connections_active: IntGauge,
    /// Connections displaced *from* this upstream (it is their home).
    pub connections_displaced: IntGauge,
    pub up: IntGauge,
    /// `cplb_upstream_self`: the address is one of cplb's own sockets.
    pub is_self: IntGauge,
    hedges: [IntCounter; 3],
    pub state_changes: IntCounter,
    pub bytes_to_upstream: IntCounter,
    pub bytes_to_client: IntCounter,
    failures: [IntCounter; 5],
    pub closed_upstream_down: IntCounter,
    pub closed_upstream_draining: IntCounter,
    pub closed_shutdown: IntCounter,
    pub closed_idle: IntCounter,
    /// Closed by fail-back so the client reconnects home.
    pub closed_failback: IntCounter,
    pub closed_upstream_timeout: IntCounter,
    pub probe_ok: IntCounter,
    /// By `probe::FAILURE_REASONS` index.
    probe_fail: [IntCounter; PROBE_FAILURE_REASONS.len()],
}

impl UpstreamMetrics {
    /// `cplb_health_checks_total{result="failure"}` for a
    /// `ProbeError::reason_index`.
    pub(crate) fn probe_failure(&self, reason_index: usize) -> &IntCounter {
        &self.probe_fail[reason_index]
    }

    pub fn failure(&self, reason: FailureReason) -> &IntCounter {
        &self.failures[reason as usize]
    }

    pub(crate) fn hedge(&self, result: Hedge) -> &IntCounter {
        &self.hedges[result as usize]
    }
}

/// Why a connect to an upstream failed; indexes `FAILURE_REASONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    Refused = 0,
    Timeout = 1,
    Reset = 2,
    Resolve = 3,
    Other = 4,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        FAILURE_REASONS[self as usize]
    }
}

/// Holds a gauge up for as long as it lives: every path that ends a
/// connection, errors and panics included, gives the count back.
pub(crate) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub(crate) fn new(g: &IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series added to `upstream` but not to `upstream_series` would
    /// survive `forget_upstream` and show a removed upstream for ever.
    #[test]
    fn forget_upstream_leaves_no_series_of_that_upstream() {
        let m = Metrics::new(Registry::new()).unwrap();
        let gone = "10.0.0.1:6443";
        let kept = "10.0.0.2:6443";
        let handles = m.upstream(gone);
        let _kept = m.upstream(kept);
        // Touch every handle, as traffic would.
        handles.connections_total.inc();
        handles.probe_ok.inc();
        handles.failure(FailureReason::Refused).inc();
        let before = m.render().unwrap();
        let label = format!("upstream=\"{gone}\"");
        let count = |text: &str, l: &str| text.lines().filter(|x| x.contains(l)).count();
        println!(
            "series of {gone} before forget_upstream: {}",
            count(&before, &label)
        );
        assert!(count(&before, &label) >= 20, "{before}");
        m.forget_upstream(gone);
        let after = m.render().unwrap();
        let left: Vec<&str> = after.lines().filter(|l| l.contains(&label)).collect();
        assert!(left.is_empty(), "left behind: {left:#?}");
        let kept_label = format!("upstream=\"{kept}\"");
        assert_eq!(count(&after, &kept_label), count(&before, &kept_label));
    }

    /// A family the encoder refuses is an error, not an empty exposition.
    #[test]
    fn an_encoding_error_is_an_error() {
        let m = Metrics::new(Registry::new()).unwrap();
        // The encoder refuses a family without a metric.
        let mut bad = prometheus::proto::MetricFamily::default();
        bad.set_name("cplb_bad".into());
        bad.set_help("a family with no metric".into());
        bad.set_field_type(prometheus::proto::MetricType::COUNTER);
        assert!(m.render_families(&[bad]).is_err());
        assert!(m.render().is_ok());
    }
}
