//! Name resolution for upstreams given as host names. Names resolve at
//! start-up; one that does not is an unusable upstream, retried in the
//! background with exponential backoff, never a crash.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::upstream::UpstreamState;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Resolves `host:port`. IP literals never touch the resolver.
pub async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
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

/// One resolution attempt, bounded in time; logs the outcome.
pub async fn resolve_once(state: &UpstreamState, host: &str, port: u16, limit: Duration) -> bool {
    match tokio::time::timeout(limit, lookup(host, port)).await {
        Ok(Ok(addrs)) => {
            tracing::debug!(upstream = %state.address, ?addrs, "resolved");
            state.set_addrs(addrs);
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %state.address, error = %e, "could not resolve upstream; it is unusable until it resolves");
            false
        }
        Err(_) => {
            tracing::warn!(upstream = %state.address, "resolving upstream timed out; it is unusable until it resolves");
            false
        }
    }
}

/// Keeps retrying until the name resolves or the upstream is removed.
pub fn spawn_retry(state: &Arc<UpstreamState>, host: String, port: u16) {
    let weak: Weak<UpstreamState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut delay = FIRST_RETRY;
        loop {
            tokio::time::sleep(delay).await;
            let Some(state) = weak.upgrade() else { return };
            if resolve_once(&state, &host, port, MAX_RETRY).await {
                tracing::info!(upstream = %state.address, "upstream resolved");
                return;
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    });
}
