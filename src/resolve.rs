//! Name resolution for upstreams given as host names. Names resolve at
//! start-up; one that does not is an unusable upstream, retried in the
//! background with exponential backoff, never a crash.
//!
//! Logging follows the name's state, not the retries: a WARN when it starts
//! failing, then one every `REPEAT_WARNING` with the count, and an INFO
//! when it resolves again (`ResolveLog`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::logfmt::Json;
use crate::upstream::UpstreamState;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often a name that keeps failing is reported again.
pub const REPEAT_WARNING: Duration = Duration::from_secs(300);

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

/// What to log about one resolution attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Nothing,
    /// The first failure after success (or at start-up).
    StartedFailing,
    /// Still failing, `REPEAT_WARNING` after the previous warning.
    StillFailing {
        /// Failed attempts since the previous warning.
        failures: u64,
        since: Duration,
    },
    Resolved {
        /// Failed attempts in the whole episode.
        failures: u64,
        after: Duration,
    },
}

/// Per-upstream log throttle; time is passed in.
#[derive(Debug, Default)]
pub struct ResolveLog {
    /// Start of the failing episode, and the time of its last warning.
    failing: Option<(Instant, Instant)>,
    since_warning: u64,
    total: u64,
}

impl ResolveLog {
    pub fn failed(&mut self, now: Instant) -> Report {
        self.total += 1;
        let Some((start, warned)) = self.failing else {
            self.failing = Some((now, now));
            self.since_warning = 0;
            return Report::StartedFailing;
        };
        self.since_warning += 1;
        if now.saturating_duration_since(warned) < REPEAT_WARNING {
            return Report::Nothing;
        }
        self.failing = Some((start, now));
        let failures = std::mem::take(&mut self.since_warning);
        Report::StillFailing {
            failures,
            since: now.saturating_duration_since(start),
        }
    }

    pub fn resolved(&mut self, now: Instant) -> Report {
        let Some((start, _)) = self.failing.take() else {
            return Report::Nothing;
        };
        let failures = std::mem::take(&mut self.total);
        self.since_warning = 0;
        Report::Resolved {
            failures,
            after: now.saturating_duration_since(start),
        }
    }
}

/// One resolution attempt, bounded in time; logs state changes only.
pub async fn resolve_once(state: &UpstreamState, host: &str, port: u16, limit: Duration) -> bool {
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
pub fn spawn_retry(state: &Arc<UpstreamState>, host: String, port: u16) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_on_the_transition_then_every_few_minutes_with_a_count() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut log = ResolveLog::default();
        assert_eq!(
            log.resolved(at(0)),
            Report::Nothing,
            "resolving at start is not news"
        );
        assert_eq!(log.failed(at(0)), Report::StartedFailing);
        // Retries every 30 s: quiet until five minutes after the warning.
        let mut said = vec![];
        for s in (30..=660).step_by(30) {
            match log.failed(at(s)) {
                Report::Nothing => {}
                r => said.push((s, r)),
            }
        }
        let five = REPEAT_WARNING.as_secs();
        assert_eq!(
            said,
            [
                (
                    five,
                    Report::StillFailing {
                        failures: 10,
                        since: Duration::from_secs(five)
                    }
                ),
                (
                    2 * five,
                    Report::StillFailing {
                        failures: 10,
                        since: Duration::from_secs(2 * five)
                    }
                ),
            ]
        );
        assert_eq!(
            log.resolved(at(700)),
            Report::Resolved {
                failures: 23,
                after: Duration::from_secs(700)
            }
        );
        assert_eq!(log.resolved(at(710)), Report::Nothing, "once");
        // A new episode warns again at once.
        assert_eq!(log.failed(at(720)), Report::StartedFailing);
        assert_eq!(log.failed(at(721)), Report::Nothing);
    }
}
