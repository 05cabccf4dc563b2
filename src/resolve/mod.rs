//! Name resolution for upstreams given as host names. Names resolve at
//! start-up; one that does not is an unusable upstream, retried in the
//! background with exponential backoff, never a crash.
//!
//! Logging follows the name's state, not the retries: a WARN when it starts
//! failing, then one every `REPEAT_WARNING` with the count, and an INFO
//! when it resolves again (`throttle::ResolveLog`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::logfmt::Json;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamState;

pub(crate) mod throttle;
use throttle::Report;

/// How long start-up and a reload wait for a name before going on without it.
const STARTUP_RESOLVE_LIMIT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Resolves `host:port`. IP literals never touch the resolver.
pub(crate) async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        ));
    }
    Ok(addrs)
}

/// One resolution attempt, bounded in time; logs state changes only.
pub(crate) async fn resolve_once(
    state: &UpstreamState,
    host: &str,
    port: u16,
    limit: Duration,
) -> bool {
    let result = match tokio::time::timeout(limit, lookup(host, port)).await {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {limit:?}")),
    };
    let now = Instant::now();
    let mut log = state.resolve_log.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(addrs) => {
            tracing::debug!(upstream = %state.address, addrs = ?Json(&addrs), "resolved");
            state.set_addrs(addrs);
            if let Report::Resolved { failures, after } = log.resolved(now) {
                tracing::info!(upstream = %state.address, failures, failing_seconds = after.as_secs(), "upstream resolved");
            }
            true
        }
        Err(error) => {
            // A reload's re-resolution that fails keeps the old addresses.
            let effect = if state.is_resolved() {
                "keeping its last addresses"
            } else {
                "it is unusable until it resolves"
            };
            match log.failed(now) {
                Report::StartedFailing => {
                    tracing::warn!(upstream = %state.address, error, "could not resolve upstream; {effect}; retrying")
                }
                Report::StillFailing { failures, since } => {
                    tracing::warn!(upstream = %state.address, error, failures, failing_seconds = since.as_secs(), "upstream still does not resolve; {effect}")
                }
                Report::Nothing | Report::Resolved { .. } => {
                    tracing::debug!(upstream = %state.address, error, "could not resolve upstream")
                }
            }
            false
        }
    }
}

/// Keeps retrying until the name resolves or the upstream is removed.
pub(crate) fn spawn_retry(state: &Arc<UpstreamState>, host: String, port: u16) {
    let weak: Weak<UpstreamState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut delay = FIRST_RETRY;
        loop {
            tokio::time::sleep(delay).await;
            let Some(state) = weak.upgrade() else { return };
            if resolve_once(&state, &host, port, MAX_RETRY).await {
                return;
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    });
}

/// Resolves upstreams concurrently, bounded in time. New ones that do not
/// resolve keep retrying in the background. With `all`, kept host names are
/// looked up again too (a reload picks up DNS changes); a failed lookup
/// keeps their last good addresses, and an unresolved kept one already has
/// its retry task.
pub(crate) async fn resolve_upstreams(
    snapshot: &Snapshot,
    added: &[Arc<UpstreamState>],
    all: bool,
) {
    let mut set = tokio::task::JoinSet::new();
    for up in snapshot.upstreams.iter() {
        let is_new = added.iter().any(|a| Arc::ptr_eq(a, &up.state));
        let is_name = up.config.host.parse::<std::net::IpAddr>().is_err();
        let wanted = is_new || (all && is_name);
        if !wanted {
            continue;
        }
        let state = up.state.clone();
        let (host, port) = (up.config.host.clone(), up.config.port);
        set.spawn(async move {
            if !resolve_once(&state, &host, port, STARTUP_RESOLVE_LIMIT).await && is_new {
                spawn_retry(&state, host, port);
            }
        });
    }
    while set.join_next().await.is_some() {}
}
