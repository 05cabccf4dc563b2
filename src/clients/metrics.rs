//! The per-client series: `client` is a name from `identity` (at most
//! `max_names` of them and `other`), resolved to handles once per name so
//! a connection only does atomic adds.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// `cplb_client_refused_total{reason}`, in `Reason` order.
pub const REFUSE_REASONS: [&str; 3] = ["max_connections", "rate", "fair_share"];
/// `cplb_client_bytes_total{direction}`, as `cplb_bytes_total`'s.
pub const DIRECTIONS: [&str; 2] = ["to_upstream", "to_client"];

#[derive(Clone)]
pub struct ClientMetrics {
    open: IntGaugeVec,
    total: IntCounterVec,
    refused: IntCounterVec,
    bytes: IntCounterVec,
}

/// One name's handles.
pub(crate) struct Series {
    pub open: IntGauge,
    pub total: IntCounter,
    pub refused: [IntCounter; 3],
    pub bytes: [IntCounter; 2],
}

impl ClientMetrics {
    pub(crate) fn new(r: &Registry) -> prometheus::Result<ClientMetrics> {
        let open = IntGaugeVec::new(
            Opts::new(
                "cplb_client_connections",
                "Client connections open now, by local client (pod, process, uid or other).",
            ),
            &["client"],
        )?;
        let total = IntCounterVec::new(
            Opts::new(
                "cplb_client_connections_total",
                "Client connections admitted, by local client.",
            ),
            &["client"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "cplb_client_refused_total",
                "Client connections closed at once by a per-client limit, by local client and reason: max_connections, rate (max_new_per_second) or fair_share (near max_connections, the client holding the most).",
            ),
            &["client", "reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "cplb_client_bytes_total",
                "Bytes proxied, by local client and direction; a connection's bytes are added when it closes.",
            ),
            &["client", "direction"],
        )?;
        r.register(Box::new(open.clone()))?;
        r.register(Box::new(total.clone()))?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(bytes.clone()))?;
        Ok(ClientMetrics {
            open,
            total,
            refused,
            bytes,
        })
    }

    /// Every series of `name`, created at 0.
    pub(crate) fn series(&self, name: &str) -> Series {
        Series {
            open: self.open.with_label_values(&[name]),
            total: self.total.with_label_values(&[name]),
            refused: REFUSE_REASONS.map(|r| self.refused.with_label_values(&[name, r])),
            bytes: DIRECTIONS.map(|d| self.bytes.with_label_values(&[name, d])),
        }
    }

    /// Drops every series of a name no longer kept (see `registry`).
    pub(crate) fn forget(&self, name: &str) {
        let _ = self.open.remove_label_values(&[name]);
        let _ = self.total.remove_label_values(&[name]);
        for r in REFUSE_REASONS {
            let _ = self.refused.remove_label_values(&[name, r]);
        }
        for d in DIRECTIONS {
            let _ = self.bytes.remove_label_values(&[name, d]);
        }
    }
}
