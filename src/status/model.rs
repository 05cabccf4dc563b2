//! The `/status` document: what `cplb status` prints, as JSON. Times are
//! Unix seconds (fractional), byte counts are totals since the upstream
//! first appeared in the config. Readers ignore unknown fields, so a newer
//! cplb can add some without breaking an older `cplb status`.

use serde::{Deserialize, Serialize};

pub(crate) use crate::shared::{LoadKind, LoadResult};
pub(crate) use crate::snapshot::Source;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Status {
    pub version: String,
    /// The config file cplb runs from; `None` when started without one.
    pub config_file: Option<String>,
    pub last_load: Load,
    /// Draining before exit (SIGTERM): `/readyz` answers 503 and no new
    /// connection is accepted. Absent from an older cplb's document: false.
    #[serde(default)]
    pub shutting_down: bool,
    /// The data plane in force. Absent from an older cplb's document: the
    /// proxy.
    #[serde(default)]
    pub dataplane: Dataplane,
    pub upstreams: Vec<Upstream>,
}

/// Where new connections are balanced (docs/kernel.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Dataplane {
    /// `dataplane.mode` as configured: `proxy`, `kernel` or `auto`.
    pub configured: String,
    /// In force: `proxy` or `kernel`.
    pub mode: String,
    /// In `auto`, why the kernel could not be used.
    pub why_proxy: Option<String>,
    /// The instance's pins under bpffs, in kernel mode.
    pub instance: Option<String>,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            configured: "proxy".into(),
            mode: "proxy".into(),
            why_proxy: None,
            instance: None,
        }
    }
}

impl Status {
    pub(crate) fn usable_upstreams(&self) -> usize {
        self.upstreams.iter().filter(|u| u.usable).count()
    }
}

/// The last load of the config file: at start-up or a reload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Load {
    pub time: f64,
    pub kind: LoadKind,
    pub result: LoadResult,
    /// Why a reload was refused (the running config stayed in force).
    pub error: Option<String>,
    /// Fields the file changed that only apply at start-up: they keep
    /// their running values until cplb restarts. Absent from an older
    /// cplb's document: none.
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    Up,
    Down,
    /// Its address is one of cplb's own listening sockets: never dialled.
    #[serde(rename = "self")]
    SelfLoop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Upstream {
    pub address: String,
    pub source: Source,
    /// Gone from the API, kept until `remove_after`: new connections only
    /// as a last resort, open ones continue.
    #[serde(default)]
    pub draining: bool,
    /// Down when either the passive or the active check has marked it down,
    /// or while its name has no address.
    pub state: State,
    /// Whether a new connection may go to it now (a passively marked-down
    /// upstream becomes usable for a trial once `fail_timeout` has passed;
    /// an unresolved name is never usable).
    pub usable: bool,
    /// Time of the last transition (start-up if none).
    pub since: f64,
    /// `start`, `passive` or `active`: what made the last transition;
    /// `resolve` while a host name has no address.
    pub changed_by: String,
    pub reason: String,
    /// The latest active probe; `None` when active checks are off or none
    /// has run yet.
    pub last_check: Option<Check>,
    pub active_connections: i64,
    /// Open connections whose home this upstream is (first on their ring
    /// walk) but that run on another: fail-back brings them home. Absent
    /// from an older cplb's document: 0.
    #[serde(default)]
    pub displaced_connections: u64,
    /// Bytes from clients to this upstream.
    pub bytes_in: u64,
    /// Bytes from this upstream to clients.
    pub bytes_out: u64,
    /// Kernel mode: what the programs counted for this master. Absent in
    /// proxy mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
}

/// One master as the kernel data plane sees it (docs/kernel.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Kernel {
    /// Rewritten connects that completed.
    pub connects: u64,
    /// Rewritten connects that failed.
    pub failures: u64,
    /// Rewritten connections open now.
    pub open: i64,
    /// As last published: the programs may choose it.
    pub usable: bool,
    /// Marked down by the kernel's own passive health (`max_fails`), for
    /// this many more seconds.
    pub down_for: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Check {
    pub time: f64,
    pub ok: bool,
    pub error: Option<String>,
}
