//! The probes behind active health checks: their I/O (`io`, `tls`) and the
//! prober tasks' lifecycle. One prober task per upstream, on its own timer
//! (with jitter so nodes do not probe in lockstep), each probe bounded by
//! `timeout`, so a hanging upstream delays nothing but its own prober.
//! Results feed `health::ActiveHealth` (rise/fall) in the upstream's state;
//! a fall with `close_on_down` evicts the upstream's proxied connections,
//! unless no other upstream is usable: at once when it is dead, after
//! `drain_grace` when it is draining (it answers, but not ready). The
//! prober times the grace, so the proxy's path has no timer of its own.

mod error;
mod io;
pub(crate) mod tls;

pub use error::ProbeError;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use tls::TlsError;

use crate::clock::Clock;
use crate::config::{CheckMode, Config};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::upstream::{EvictReason, UpstreamState};

/// Everything a prober needs, prepared (files read) before a config applies.
#[derive(Debug)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub path: String,
    pub close_on_down: bool,
    pub drain_grace: Duration,
    tls: Option<(
        Arc<ClientConfig>,
        Option<rustls::pki_types::ServerName<'static>>,
    )>,
}

/// Reads certificates and builds the TLS client; `None` when the config
/// has no `health_check` section.
pub fn prepare(config: &Config) -> Result<Option<Arc<ProbeSettings>>, TlsError> {
    let Some(hc) = &config.health_check else {
        return Ok(None);
    };
    let tls = match hc.mode {
        CheckMode::Tcp => None,
        CheckMode::Https => {
            let client = tls::client_config(&hc.tls)?;
            let name = hc
                .tls
                .server_name
                .as_deref()
                .map(tls::server_name)
                .transpose()?;
            Some((client, name))
        }
    };
    Ok(Some(Arc::new(ProbeSettings {
        interval: hc.interval,
        timeout: hc.timeout,
        rise: hc.rise.get(),
        fall: hc.fall.get(),
        path: hc.path.clone(),
        close_on_down: hc.close_on_down,
        drain_grace: hc.drain_grace,
        tls,
    })))
}

/// Owns the prober tasks; told about every applied snapshot.
pub(crate) struct Probers {
    shared: Arc<Shared>,
    probers: HashMap<String, CancellationToken>,
}

impl Probers {
    pub(crate) fn new(shared: Arc<Shared>) -> Probers {
        Probers {
            shared,
            probers: HashMap::new(),
        }
    }

    /// Restarts probers for the new snapshot. Hysteresis counters live in
    /// the upstream state, so a restart loses no progress.
    pub(crate) fn apply(&mut self, settings: Option<Arc<ProbeSettings>>, snapshot: &Snapshot) {
        for (_, stop) in self.probers.drain() {
            stop.cancel();
        }
        let Some(settings) = settings else {
            let now = self.shared.clock.now_ms();
            for u in &snapshot.upstreams {
                u.state.active.clear_result();
                u.state.active.set_drain_until(None);
                u.state.set_active(true, now, "health checks disabled");
            }
            return;
        };
        for u in &snapshot.upstreams {
            let stop = CancellationToken::new();
            let default_name = tls::server_name(&u.config.host).ok();
            tokio::spawn(prober(
                self.shared.clone(),
                u.state.clone(),
                settings.clone(),
                default_name,
                stop.clone(),
            ));
            self.probers.insert(u.config.address.clone(), stop);
        }
    }

    pub(crate) fn stop(&mut self) {
        for (_, stop) in self.probers.drain() {
            stop.cancel();
        }
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Up to ±10% of `interval`, from a per-upstream xorshift: no shared RNG.
/// The offset is a fraction of a tenth and the sum saturates, so no
/// interval, however large, can make `Duration` arithmetic panic.
fn jittered(interval: Duration, seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let per_mille = (*seed % 2001) as u32; // 0 ..= 2000, 1000 is no jitter
    let tenth = interval / 10;
    if per_mille >= 1000 {
        interval.saturating_add((tenth / 1000).saturating_mul(per_mille - 1000))
    } else {
        interval.saturating_sub((tenth / 1000).saturating_mul(1000 - per_mille))
    }
}

async fn prober(
    shared: Arc<Shared>,
    state: Arc<UpstreamState>,
    settings: Arc<ProbeSettings>,
    default_name: Option<rustls::pki_types::ServerName<'static>>,
    stop: CancellationToken,
) {
    let mut seed = crc32fast::hash(state.address.as_bytes()) as u64
        // Only a seed: the bits of the time as a float mix well enough.
        ^ Clock::unix_now().to_bits()
        | 1;
    // The first probe soon, spread over a tenth of the interval.
    let mut delay = (settings.interval / 10).min(jittered(settings.interval, &mut seed) / 10);
    // Consecutive failures that say dead, for a draining upstream turning dead.
    let mut dead_streak = 0u32;
    loop {
        if !wait(&shared, &state, &settings, delay, &stop).await {
            return;
        }
        delay = jittered(settings.interval, &mut seed);
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(settings.timeout, probe_once(&state, &settings, &default_name)) => {
                r.unwrap_or(Err(ProbeError::Timeout(settings.timeout)))
            }
        };
        shared
            .metrics
            .probe_duration
            .observe(started.elapsed().as_secs_f64());
        state.active.note_result(shared.clock.now_ms(), &result);
        let ok = result.is_ok();
        if ok {
            state.metrics.probe_ok.inc();
            // A passing probe connected: that is the success passive health
            // waits for, so a master marked down by refused connects comes
            // back without a client having to risk a trial connect.
            if let Some(t) = state.passive.on_success(shared.clock.now_ms()) {
                state.passive_transition(t, "health check passed", None);
            }
        } else {
            if let Err(e) = &result {
                state.metrics.probe_failure(e.reason_index()).inc();
            }
        }
        dead_streak = match &result {
            Err(e) if !e.is_draining() => dead_streak.saturating_add(1),
            _ => 0,
        };
        let flipped = state.active.record(ok, settings.rise, settings.fall);
        match (&result, flipped) {
            (_, Some(up)) => {
                let detail = result
                    .as_ref()
                    .err()
                    .map_or_else(|| "checks pass".to_string(), ToString::to_string);
                let now = shared.clock.now_ms();
                state.set_active(up, now, &detail);
                // The kernel's maps follow within this probe, not a tick.
                shared.dataplane.kick();
                if up {
                    if state.active.drain_until().is_some() {
                        state.active.set_drain_until(None);
                        tracing::info!(upstream = %state.address, "draining upstream back up within drain_grace; its connections stay");
                    }
                } else if settings.close_on_down {
                    match &result {
                        Err(e) if e.is_draining() => start_drain(&state, &settings, now),
                        _ => evict(&shared, &state, EvictReason::Dead),
                    }
                }
            }
            (Err(e), None) => {
                // Dead as surely as a fall would say: `fall` probes in a row.
                if dead_streak >= settings.fall && state.active.drain_until().is_some() {
                    state.active.set_drain_until(None);
                    tracing::warn!(upstream = %state.address, reason = e.reason(), error = %e, "draining upstream turned dead");
                    evict(&shared, &state, EvictReason::Dead);
                }
                tracing::debug!(upstream = %state.address, error = %e, reason = e.reason(), "health check failed")
            }
            (Ok(()), None) => {}
        }
    }
}

/// Sleeps `delay` until the next probe, closing a draining upstream's
/// connections if its `drain_grace` ends meanwhile. False when stopped.
async fn wait(
    shared: &Shared,
    state: &Arc<UpstreamState>,
    settings: &ProbeSettings,
    delay: Duration,
    stop: &CancellationToken,
) -> bool {
    let next_probe = tokio::time::sleep(delay);
    tokio::pin!(next_probe);
    loop {
        let drain_until = state.active.drain_until();
        let left = drain_until.map_or(Duration::ZERO, |t| {
            Duration::from_millis(t.saturating_sub(shared.clock.now_ms()))
        });
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = &mut next_probe => return true,
            _ = tokio::time::sleep(left), if drain_until.is_some() => {
                state.active.set_drain_until(None);
                // A reload may have turned `close_on_down` off meanwhile.
                if settings.close_on_down {
                    evict(shared, state, EvictReason::Draining);
                }
            }
        }
    }
}

/// A fall on "not ready": no new connections (the verdict is down), and the
/// open ones close when `drain_grace` ends, unless it comes back first.
fn start_drain(state: &UpstreamState, settings: &ProbeSettings, now: u64) {
    let grace_ms = u64::try_from(settings.drain_grace.as_millis()).unwrap_or(u64::MAX);
    state
        .active
        .set_drain_until(Some(now.saturating_add(grace_ms)));
    let open = state.metrics.connections_active.get();
    tracing::info!(
        upstream = %state.address,
        open,
        drain_grace_ms = grace_ms,
        "upstream draining; its open connections close after drain_grace"
    );
}

async fn probe_once(
    state: &UpstreamState,
    settings: &ProbeSettings,
    default_name: &Option<rustls::pki_types::ServerName<'static>>,
) -> Result<(), ProbeError> {
    let addr = *state.addrs().first().ok_or(ProbeError::Unresolved)?;
    match &settings.tls {
        None => io::tcp(addr).await,
        Some((client, name)) => {
            let name = name
                .clone()
                .or_else(|| default_name.clone())
                .ok_or_else(|| ProbeError::Tls("no TLS server name".into()))?;
            io::https(addr, client.clone(), name, &settings.path).await
        }
    }
}

/// Closes the proxied connections of an upstream that went down (dead, or
/// drained), so its clients reconnect to a healthy one, unless it is the
/// last one usable.
fn evict(shared: &Shared, state: &Arc<UpstreamState>, why: EvictReason) {
    let snap = shared.snapshot.load();
    let now = shared.clock.now_ms();
    let others = snap
        .upstreams
        .iter()
        .any(|u| !Arc::ptr_eq(&u.state, state) && u.state.is_usable(u.policy, now));
    let open = state.metrics.connections_active.get();
    // With no connection open there is nothing to report either way.
    if !others {
        if open > 0 {
            tracing::warn!(upstream = %state.address, open, "no other upstream is usable; keeping its connections");
        }
        return;
    }
    state.evict(why);
    if open > 0 {
        match why {
            EvictReason::Dead => {
                tracing::info!(upstream = %state.address, closed = open, "closed client connections of an upstream marked down")
            }
            EvictReason::Draining => {
                tracing::info!(upstream = %state.address, closed = open, "closed client connections of a draining upstream after drain_grace")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let i = Duration::from_millis(2000);
        for _ in 0..1000 {
            let j = jittered(i, &mut seed);
            assert!(
                j >= Duration::from_millis(1800) && j <= Duration::from_millis(2200),
                "{j:?}"
            );
        }
    }

    #[test]
    fn jitter_of_huge_intervals_does_not_panic() {
        let mut seed = 1;
        for i in [
            Duration::MAX,
            Duration::MAX / 2,
            Duration::from_secs(u64::MAX),
        ] {
            for _ in 0..100 {
                let j = jittered(i, &mut seed);
                assert!(j >= i - i / 10, "{j:?}");
            }
        }
    }
}
