//! Configuration reload. Every trigger (the file watcher, SIGHUP, an
//! explicit request) goes through one task and one code path: read the
//! whole file, validate it, then publish a new snapshot in one swap. An
//! invalid file changes nothing but a log line and a metric.
//!
//! Triggers are flags, not a queue: any number of them before a reload
//! begins are served by that reload, and one that arrives while a reload
//! runs makes one more reload after it, so none is ever dropped and a
//! burst costs one reload. The file and certificate reads run off the
//! control-plane thread (`offload`), so a hung volume stalls the reload,
//! never `/healthz` or the probes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::discovery::run::Wiring;
use crate::logfmt::{Chain, Json};
use crate::offload::{Offload, Stalled};
use crate::probe::{ProbeSettings, Probers};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::upstream::StateTable;

/// File events arrive in bursts (an editor's temp file and rename, the
/// kubelet's three-step ConfigMap swap); wait for this much quiet.
const DEBOUNCE: Duration = Duration::from_millis(150);
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// A config file and its certificates are a few kB on a local disk or a
/// ConfigMap volume: a read that takes longer is stuck, and the reload is
/// refused rather than left to wait (discovery keeps applying meanwhile).
const READ_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy was not started from a config file; nothing to reload")]
    NoSource,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::probe::TlsError),
    #[error(transparent)]
    Upstreams(#[from] crate::ring::TooManyServers),
    #[error("could not load {path}")]
    Stalled {
        path: PathBuf,
        #[source]
        source: Stalled,
    },
    #[error("the proxy is shutting down")]
    Stopped,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file's content is what is already running.
    Unchanged,
    Applied(Changes),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Upstreams kept whose weight or health settings changed.
    pub modified: Vec<String>,
    /// Global settings applied by this reload, e.g. `idle_timeout`,
    /// `health_check.interval`.
    pub settings: Vec<&'static str>,
    /// Fields that were changed in the file but need a restart.
    pub restart_needed: Vec<&'static str>,
}

/// The global settings that differ between two configs, by field name.
pub(crate) fn changed_settings(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, name| {
        if changed {
            out.push(name);
        }
    };
    check(
        old.max_connections != new.max_connections,
        "max_connections",
    );
    check(
        old.connect_timeout != new.connect_timeout,
        "connect_timeout",
    );
    check(old.idle_timeout != new.idle_timeout, "idle_timeout");
    check(
        old.first_byte_timeout != new.first_byte_timeout,
        "first_byte_timeout",
    );
    check(
        old.tcp_user_timeout != new.tcp_user_timeout,
        "tcp_user_timeout",
    );
    check(
        old.next_upstream_tries != new.next_upstream_tries,
        "next_upstream_tries",
    );
    check(old.shutdown_grace != new.shutdown_grace, "shutdown_grace");
    check(old.hash.key != new.hash.key, "hash.key");
    check(old.hash.node_id != new.hash.node_id, "hash.node_id");
    check(old.discovery != new.discovery, "discovery");
    check(old.failback != new.failback, "failback");
    check(old.clients != new.clients, "clients");
    match (&old.health_check, &new.health_check) {
        (Some(a), Some(b)) => {
            check(a.interval != b.interval, "health_check.interval");
            check(a.timeout != b.timeout, "health_check.timeout");
            check(a.rise != b.rise, "health_check.rise");
            check(a.fall != b.fall, "health_check.fall");
            check(a.mode != b.mode, "health_check.mode");
            check(a.path != b.path, "health_check.path");
            check(
                a.close_on_down != b.close_on_down,
                "health_check.close_on_down",
            );
            check(a.drain_grace != b.drain_grace, "health_check.drain_grace");
            check(a.tls != b.tls, "health_check.tls");
        }
        (a, b) => check(a.is_some() != b.is_some(), "health_check"),
    }
    out
}

/// Why a read config was refused before anything changed.
enum Refusal {
    Config(ConfigError),
    Tls(crate::probe::TlsError),
}

/// Parses and validates `text`, and prepares the probes' TLS (reading the
/// certificate files): the blocking part of a reload.
fn load(text: &str, path: &Path) -> Result<(Config, Option<Arc<ProbeSettings>>), Refusal> {
    let config = Config::parse(text, path).map_err(Refusal::Config)?;
    let checks = crate::probe::prepare(&config).map_err(Refusal::Tls)?;
    Ok((config, checks))
}

/// A list field for a log line, left out when empty: `modified=[]` says
/// nothing.
fn listed<T: serde::Serialize>(v: &[T]) -> Option<tracing::field::DebugValue<Json<&[T]>>> {
    (!v.is_empty()).then(|| tracing::field::debug(Json(v)))
}

type Reply = oneshot::Sender<Result<Outcome, ReloadError>>;

/// What the reloader has yet to do.
#[derive(Default)]
struct Pending {
    /// The watcher saw the file or its directory change: reload if the
    /// content differs.
    file: bool,
    /// SIGHUP or a request: reload even if unchanged (certificates and
    /// names are re-read).
    forced: bool,
    /// Requests waiting for their result, one reload each.
    replies: VecDeque<Reply>,
    /// The reloader is gone: requests get `Stopped`.
    stopped: bool,
}

/// The triggers a handle sets and the reloader takes.
#[derive(Default)]
struct Triggers {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Triggers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A guard is only held to flip flags; none can panic while held.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what `set` sets and wakes the reloader; false once it is gone.
    fn raise(&self, set: impl FnOnce(&mut Pending)) -> bool {
        let mut p = self.lock();
        if p.stopped {
            return false;
        }
        set(&mut p);
        drop(p);
        self.wake.notify_one();
        true
    }
}

/// Sends reload triggers to the reload task. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    triggers: Arc<Triggers>,
}

impl ReloadHandle {
    /// From the file watcher: covered by any reload that has not begun.
    pub fn file_changed(&self) {
        self.triggers.raise(|p| p.file = true);
    }

    /// From SIGHUP: fire and forget. Covered by a reload that has not
    /// begun; during a reload, makes one more after it.
    pub fn signal(&self) {
        self.triggers.raise(|p| p.forced = true);
    }

    /// Reloads now and reports the result.
    pub async fn reload(&self) -> Result<Outcome, ReloadError> {
        let (tx, rx) = oneshot::channel();
        let raised = self.triggers.raise(move |p| {
            p.forced = true;
            p.replies.push_back(tx);
        });
        if !raised {
            return Err(ReloadError::Stopped);
        }
        rx.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// The SIGHUP task: each signal asks for a forced reload. `hup` is the
/// stream installed at start-up, or `None` in a restarted task, which
/// installs its own.
pub(crate) async fn on_sighup(hup: Option<tokio::signal::unix::Signal>, handle: ReloadHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match hup.map_or_else(|| signal(SignalKind::hangup()), Ok) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "could not install the SIGHUP handler; file changes still reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading configuration");
        handle.signal();
    }
}

/// One reload's worth of triggers, taken from `Pending`.
struct Taken {
    due: bool,
    forced: bool,
    reply: Option<Reply>,
}

/// Owns the running config and the upstream state table.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    config: Config,
    table: StateTable,
    triggers: Arc<Triggers>,
    /// The file and certificate reads, off the control-plane thread.
    files: Offload,
    checker: Probers,
    /// The last refused text: unforced events that see it again stay quiet
    /// instead of logging and counting the same refusal over and over.
    refused_text: Option<String>,
    /// The last reload was refused and nothing has been applied since.
    refusing: bool,
    /// Prepared at start-up, handed to the checker when `run` begins.
    initial_checks: Option<Arc<ProbeSettings>>,
    /// The checks in force, re-applied when discovery changes the set.
    checks: Option<Arc<ProbeSettings>>,
    /// Discovery: decides the upstream list while it is on.
    disc: Wiring,
}

impl Reloader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: Config,
        table: StateTable,
        checks: Option<Arc<ProbeSettings>>,
        disc: Wiring,
    ) -> (Reloader, ReloadHandle) {
        let triggers = Arc::new(Triggers::default());
        let r = Reloader {
            triggers: triggers.clone(),
            files: Offload::new(READ_LIMIT),
            checker: Probers::new(shared.clone()),
            refused_text: None,
            refusing: false,
            initial_checks: checks,
            checks: None,
            disc,
            shared,
            config,
            table,
        };
        (r, ReloadHandle { triggers })
    }

    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let snapshot = self.shared.snapshot.load_full();
        self.checks = self.initial_checks.take();
        self.checker.apply(self.checks.clone(), &snapshot);
        self.disc.start(self.shared.clone());
        loop {
            // Flags raised meanwhile are served without waiting: a wake-up
            // is only a hint to look.
            let (file, forced) = self.peek();
            if !file && !forced {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.triggers.wake.notified() => {}
                    ev = self.disc.next() => {
                        if self.disc.handle(ev) {
                            self.rebuild().await;
                        }
                    }
                }
                continue;
            }
            if stop.is_cancelled() {
                return;
            }
            if !forced {
                self.debounce().await;
            }
            let Taken { due, forced, reply } = self.take();
            if !due {
                continue;
            }
            let r = self.reload(forced).await;
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        }
    }

    fn peek(&self) -> (bool, bool) {
        let p = self.triggers.lock();
        (p.file, p.forced)
    }

    /// Takes what one reload serves: every flag, and one waiting request
    /// (the others keep `forced` raised, for a reload each).
    fn take(&self) -> Taken {
        let mut p = self.triggers.lock();
        let reply = p.replies.pop_front();
        let taken = Taken {
            due: p.file || p.forced,
            forced: p.forced,
            reply,
        };
        p.file = false;
        p.forced = !p.replies.is_empty();
        taken
    }

    /// Swallows the rest of a burst of file events: returns after
    /// `DEBOUNCE` without one (`DEBOUNCE_MAX` at most), or as soon as a
    /// forced trigger arrives, which this reload then serves.
    async fn debounce(&self) {
        let end = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(end);
            if tokio::time::timeout_at(quiet, self.triggers.wake.notified())
                .await
                .is_err()
                || self.peek().1
            {
                return;
            }
        }
    }

    async fn reload(&mut self, forced: bool) -> Result<Outcome, ReloadError> {
        let path = self.config.source.clone().ok_or(ReloadError::NoSource)?;
        let file = path.clone();
        let text = match self
            .off_thread(&path, move || std::fs::read_to_string(file))
            .await?
        {
            Ok(t) => t,
            Err(source) => {
                // A ConfigMap swap or an editor's rename can leave the path
                // missing for an instant; the next event retries.
                let e = ConfigError::Read { path, source };
                self.refused(&e);
                return Err(e.into());
            }
        };
        if !forced && self.config.source_text.as_deref() == Some(text.as_str()) {
            if self.refusing {
                // A bad edit was undone: the file is what is running again,
                // so the alert on the gauge must clear.
                self.refused_text = None;
                // The file is what was applied last, restart-only fields
                // included: what waited for a restart still does.
                let pending = self.shared.last_load.load().restart_needed.clone();
                self.loaded_good(&path, &pending);
                tracing::info!(file = %path.display(), "config file is valid again: its content is the running config");
            } else {
                tracing::debug!(file = %path.display(), "config file event, content unchanged; nothing to do");
            }
            return Ok(Outcome::Unchanged);
        }
        // Validation looks at the files the config names, and the probes'
        // TLS set-up reads the certificates: off the thread as well.
        let (t, p) = (text.clone(), path.clone());
        let (mut new, checks) = match self.off_thread(&path, move || load(&t, &p)).await? {
            Ok(loaded) => loaded,
            Err(Refusal::Config(e)) => {
                if forced || self.refused_text.as_deref() != Some(text.as_str()) {
                    self.refused(&e);
                }
                self.refused_text = Some(text);
                return Err(e.into());
            }
            Err(Refusal::Tls(e)) => {
                // Certificate files are re-read on every reload; a bad one
                // refuses the whole config, before anything is swapped.
                self.refused(&e);
                return Err(e.into());
            }
        };
        let m = &self.shared.metrics;
        new.source = Some(path.clone());
        new.source_text = Some(text.into());
        let restart_needed = self.config.restart_only_changes(&new);
        // Those fields stay as the running process has them.
        new.listen = self.config.listen.clone();
        new.workers = self.config.workers;
        new.backlog = self.config.backlog;
        new.admin = self.config.admin;
        self.refused_text = None;
        let changes = self.diff(&new, restart_needed);
        self.disc.reconfigure(&self.config, &new).await;
        let entries = self.disc.entries(&new);
        let built = match Snapshot::build_with(&new, &entries, &mut self.table, m) {
            Ok(b) => b,
            // Validation and discovery's cap keep the set within the ring's
            // bound; should either fail, the reload is refused, not a panic.
            Err(e) => {
                self.refused(&e);
                return Err(e.into());
            }
        };
        crate::resolve::resolve_upstreams(&built.snapshot, &built.added, true).await;
        let snapshot = Arc::new(built.snapshot);
        self.shared.snapshot.store(snapshot.clone());
        self.shared.dataplane.kick();
        self.checks = checks.clone();
        self.checker.apply(checks, &snapshot);
        for gone in &built.removed {
            // Its displaced connections are no longer displaced.
            gone.displaced.retire();
            m.forget_upstream(&gone.address);
        }
        self.disc.published(&snapshot).await;
        m.reload("success").inc();
        m.last_reload_success_timestamp.set(Clock::unix_now());
        self.loaded_good(&path, &changes.restart_needed);
        let nothing = changes.added.is_empty()
            && changes.removed.is_empty()
            && changes.modified.is_empty()
            && changes.settings.is_empty()
            && changes.restart_needed.is_empty();
        tracing::info!(
            file = %path.display(),
            added = listed(&changes.added),
            removed = listed(&changes.removed),
            modified = listed(&changes.modified),
            settings = listed(&changes.settings),
            "config reloaded{}",
            if nothing { "; nothing changed" } else { "" }
        );
        if !changes.restart_needed.is_empty() {
            tracing::warn!(
                fields = ?Json(&changes.restart_needed),
                "config reloaded, but these fields only apply at start-up and keep their running values: restart cplb to apply them (a restart hands the listening sockets over without dropping a connection; `cplb status` and cplb_config_restart_needed show it until then)"
            );
        }
        self.config = new;
        Ok(Outcome::Applied(changes))
    }

    /// Runs a read of `path` off the control-plane thread; a read that
    /// hangs refuses the reload (logged, counted) like a bad file.
    async fn off_thread<T: Send + 'static>(
        &mut self,
        path: &Path,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReloadError> {
        match self.files.run(read).await {
            Ok(v) => Ok(v),
            Err(source) => {
                let e = ReloadError::Stalled {
                    path: path.to_owned(),
                    source,
                };
                self.refused(&e);
                Err(e)
            }
        }
    }

    /// Discovery changed the set: the same path as a reload, with the
    /// running config. Upstreams it removed (drained for `remove_after`)
    /// close their remaining connections.
    async fn rebuild(&mut self) {
        let m = &self.shared.metrics;
        let entries = self.disc.entries(&self.config);
        let built = match Snapshot::build_with(&self.config, &entries, &mut self.table, m) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "discovered upstreams not applied; the running set stays");
                return;
            }
        };
        crate::resolve::resolve_upstreams(&built.snapshot, &built.added, false).await;
        let snapshot = Arc::new(built.snapshot);
        self.shared.snapshot.store(snapshot.clone());
        self.shared.dataplane.kick();
        self.checker.apply(self.checks.clone(), &snapshot);
        for gone in &built.removed {
            gone.retire();
            gone.displaced.retire();
            m.forget_upstream(&gone.address);
        }
        self.disc.published(&snapshot).await;
    }

    /// The file at `path` is the running config, freshly applied or a
    /// refused edit undone: the gauge and `/status` say so again, and name
    /// the fields that wait for a restart.
    fn loaded_good(&mut self, path: &std::path::Path, restart_needed: &[&'static str]) {
        self.refusing = false;
        let m = &self.shared.metrics;
        m.last_reload_successful.set(1);
        m.restart_needed.set(i64::from(!restart_needed.is_empty()));
        let mut record =
            crate::shared::LoadRecord::reload(Some(path.to_path_buf()), Clock::unix_now(), None);
        record.restart_needed = restart_needed.to_vec();
        self.shared.last_load.store(Arc::new(record));
    }

    fn refused(&mut self, e: &dyn std::error::Error) {
        self.refusing = true;
        let m = &self.shared.metrics;
        m.reload("failure").inc();
        m.last_reload_successful.set(0);
        self.shared
            .last_load
            .store(Arc::new(crate::shared::LoadRecord::reload(
                self.config.source.clone(),
                Clock::unix_now(),
                Some(Chain(e).to_string()),
            )));
        tracing::error!(error = %Chain(e), "config reload refused; the running config stays in force");
    }

    fn diff(&self, new: &Config, restart_needed: Vec<&'static str>) -> Changes {
        let old = &self.config.upstreams;
        let find = |list: &[crate::config::UpstreamConfig], a: &str| {
            list.iter().find(|u| u.address == a).cloned()
        };
        Changes {
            added: new
                .upstreams
                .iter()
                .filter(|u| find(old, &u.address).is_none())
                .map(|u| u.address.clone())
                .collect(),
            removed: old
                .iter()
                .filter(|u| find(&new.upstreams, &u.address).is_none())
                .map(|u| u.address.clone())
                .collect(),
            modified: new
                .upstreams
                .iter()
                .filter(|u| find(old, &u.address).is_some_and(|o| o != **u))
                .map(|u| u.address.clone())
                .collect(),
            settings: changed_settings(&self.config, new),
            restart_needed,
        }
    }
}

/// However the reloader ends (stopped, or unwound by a panic), waiting and
/// later requests get `Stopped` instead of waiting forever.
impl Drop for Reloader {
    fn drop(&mut self) {
        let mut p = self.triggers.lock();
        p.stopped = true;
        p.replies.clear();
    }
}
