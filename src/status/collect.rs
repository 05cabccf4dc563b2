//! The server side of `/status`: the document built from the live state.

use super::model::{Check, Dataplane, Kernel, Load, State, Status, Upstream};
use crate::shared::Shared;

pub(crate) fn collect(shared: &Shared) -> Status {
    let snap = shared.snapshot.load();
    let now = shared.clock.now_ms();
    let clock = &shared.clock;
    let load = shared.last_load.load();
    let kernel = shared.dataplane.kernel.load();
    let upstreams = snap
        .upstreams
        .iter()
        .map(|u| {
            let s = &u.state;
            let resolved = s.is_resolved();
            let up = resolved && !s.passive.is_down() && s.active.is_up();
            let change = s.last_change();
            // A name that never resolved has no transition to show, only this.
            let (changed_by, reason) = if s.is_self() {
                (
                    "resolve".to_string(),
                    "its address is cplb's own listen address: never dialled".to_string(),
                )
            } else if resolved {
                (change.cause.as_str().to_string(), change.reason.clone())
            } else {
                (
                    "resolve".to_string(),
                    "no address: the name has not resolved".to_string(),
                )
            };
            Upstream {
                address: u.config.address.clone(),
                source: u.source,
                draining: u.draining,
                state: if s.is_self() {
                    State::SelfLoop
                } else if up {
                    State::Up
                } else {
                    State::Down
                },
                usable: s.is_usable(u.policy, now),
                since: clock.to_unix_secs(change.at_ms),
                changed_by,
                reason,
                last_check: s.active.last_result().map(|r| Check {
                    time: clock.to_unix_secs(r.at_ms),
                    ok: r.ok,
                    error: r.error.clone(),
                }),
                active_connections: s.metrics.connections_active.get(),
                displaced_connections: s.displaced.count(),
                bytes_in: s.metrics.bytes_to_upstream.get(),
                bytes_out: s.metrics.bytes_to_client.get(),
                kernel: s.addrs().first().and_then(|a| {
                    kernel.iter().find(|k| k.addr == *a).map(|k| Kernel {
                        connects: k.connects,
                        failures: k.failures,
                        open: k.open,
                        usable: k.usable,
                        down_for: k.down_for.map(|d| d.as_secs_f64()),
                    })
                }),
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_file: load.file.as_ref().map(|p| p.display().to_string()),
        last_load: Load {
            time: load.at,
            kind: load.kind,
            result: load.result,
            error: load.error.clone(),
            restart_needed: load.restart_needed.iter().map(|f| f.to_string()).collect(),
        },
        shutting_down: shared.draining.load(std::sync::atomic::Ordering::Acquire),
        dataplane: shared
            .dataplane
            .in_force
            .get()
            .map(|d| Dataplane {
                configured: d.configured.as_str().to_string(),
                mode: if d.kernel { "kernel" } else { "proxy" }.to_string(),
                why_proxy: d.why_proxy.clone(),
                instance: d.instance.clone(),
            })
            .unwrap_or_default(),
        upstreams,
    }
}
