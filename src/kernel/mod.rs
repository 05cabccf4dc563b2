//! The kernel data plane: BPF programs on the cgroup `connect()` hooks
//! rewrite a TCP connect to one of this instance's listen addresses into a
//! connect to the chosen master, so the client talks to it directly and
//! cplb leaves the byte path (docs/kernel.md).
//!
//! - `programs`: the object build.rs compiled from bpf/cplb.bpf.c.
//! - `maps`: the maps' layouts, mirrored from the C.
//! - `tables`: what user space publishes (plain data) and `slots_from_ring`.
//! - `plan`: a publish as ordered writes, with stable master indexes.
//! - `store`: the open maps; applies plans, reads state back.
//! - `counters`: per-master counters and marks, rewritten connections,
//!   client identities.
//! - `loader`: load, adopt pins and update links, attach, detach.
//! - `pins`: the instance's name and its pins under bpffs.
//! - `cgroup`: the cgroup v2 directory to attach to.
//! - `preflight`: capabilities, mounts and kernel features, all named.
//! - `destroy`: sock_diag dump and `SOCK_DESTROY` of rewritten sockets.
//! - `config`: the `dataplane:` section, ready to be wired.
//! - `sys`: the system calls aya 0.14 lacks (the one `unsafe` place).

mod cgroup;
pub mod config;
mod counters;
mod destroy;
mod error;
mod loader;
mod maps;
mod pins;
mod plan;
mod preflight;
mod programs;
mod store;
mod sys;
mod tables;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use counters::{BackendStatus, Connection, Identity};
pub use destroy::{DestroyError, Filter};
pub use error::KernelError;
pub use loader::Detached;
pub use maps::{CANDIDATES, MAX_SERVICES, MAX_SLOTS};
pub use pins::Instance;
pub use preflight::{Missing, PreflightError, check as preflight};
pub use programs::built_with_programs;
pub use tables::{Backend, Service, Tables, TablesError, slots_from_ring};

use maps::{AddrKey, BACKEND_USABLE};
use plan::State;
use store::Store;

/// Where an instance attaches and pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The bpffs mount (`dataplane.bpffs`).
    pub bpffs: PathBuf,
    /// The cgroup v2 directory whose processes are balanced
    /// (`dataplane.cgroup`); `None`: the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    /// The instance's listen addresses: they name its pins, and only
    /// connects to them are rewritten.
    pub listen: Vec<SocketAddr>,
}

/// One instance's programs, attached, and its maps.
pub struct Plane {
    instance: Instance,
    store: Store,
    state: State,
    adopted: bool,
    replaced: Vec<&'static str>,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plane")
            .field("instance", &self.instance)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

impl Plane {
    /// Checks every requirement (naming all that is missing), then loads
    /// the programs and attaches them, or adopts the pins of an earlier
    /// start of the same instance and swaps its programs in place. Until a
    /// `publish`, a new instance rewrites nothing; an adopted one goes on
    /// with what was published last.
    pub fn open(settings: &Settings) -> Result<Plane, KernelError> {
        let ready = preflight::run(&settings.bpffs, settings.cgroup.as_deref())?;
        let instance = Instance::new(&settings.bpffs, &settings.listen);
        let loaded = loader::load(&instance, &ready)?;
        let state = loaded.store.state()?;
        Ok(Plane {
            instance,
            store: loaded.store,
            state,
            adopted: loaded.adopted,
            replaced: loaded.replaced,
        })
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Whether this start found every pin of the instance and replaced its
    /// programs in place (a restart).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Pinned maps of an older layout that this start replaced by empty
    /// ones (their state is lost).
    pub fn replaced_maps(&self) -> &[&'static str] {
        &self.replaced
    }

    /// Makes `tables` what the programs choose from, in an order that
    /// keeps every connect's choice consistent (`plan`).
    pub fn publish(&mut self, tables: &Tables) -> Result<(), KernelError> {
        let local = sys::local_addrs().unwrap_or_default();
        let plan = plan::plan(&self.state, tables, &local)?;
        if let Err(e) = self.store.apply(&plan.ops) {
            // Some writes landed: learn the maps' contents again.
            self.state = self.store.state()?;
            return Err(e);
        }
        self.state = plan.next;
        Ok(())
    }

    fn index(&self, addr: SocketAddr) -> Result<u16, KernelError> {
        self.state
            .index_of(addr)
            .ok_or(KernelError::UnknownBackend { addr })
    }

    /// Marks one master usable or not (the active check's verdict), with
    /// one map write.
    pub fn set_usable(&mut self, addr: SocketAddr, usable: bool) -> Result<(), KernelError> {
        let i = self.index(addr)?;
        let mut v = self.store.backend(i)?;
        v.flags = (v.flags & !BACKEND_USABLE) | if usable { BACKEND_USABLE } else { 0 };
        self.store.set_backend(i, v)?;
        self.state.backends[i as usize] = v;
        Ok(())
    }

    /// Clears the in-kernel passive-health mark and failure count of a
    /// master (the active check found it up again).
    pub fn clear_down(&mut self, addr: SocketAddr) -> Result<(), KernelError> {
        let i = self.index(addr)?;
        self.store.clear_health(i)
    }

    /// Every master the maps know, live and retired, with its counters.
    pub fn backends(&self) -> Result<Vec<BackendStatus>, KernelError> {
        let now = sys::monotonic_ns();
        let mut out = Vec::new();
        for (i, b) in self.store.backends_raw()?.iter().enumerate() {
            if b.family == 0 {
                continue;
            }
            let i = i as u16;
            out.push(BackendStatus::new(
                i,
                b,
                &self.store.health(i)?,
                &self.store.stats(i)?,
                now,
            ));
        }
        Ok(out)
    }

    /// The one master at `addr`.
    pub fn backend(&self, addr: SocketAddr) -> Result<BackendStatus, KernelError> {
        let i = self.index(addr)?;
        Ok(BackendStatus::new(
            i,
            &self.store.backend(i)?,
            &self.store.health(i)?,
            &self.store.stats(i)?,
            sys::monotonic_ns(),
        ))
    }

    /// The rewritten connections the programs know (established ones and
    /// connects in flight).
    pub fn connections(&self) -> Result<Vec<Connection>, KernelError> {
        let backends = self.store.backends_raw()?;
        let addr_of = |i: u16| {
            backends
                .get(i as usize)
                .filter(|b| b.family != 0)
                .map(|b| b.socket_addr())
        };
        Ok(self
            .store
            .conns()?
            .iter()
            .filter(|(_, c)| c.flags & maps::CONN_REWRITTEN != 0)
            .filter_map(|(cookie, c)| Connection::new(*cookie, c, addr_of))
            .collect())
    }

    /// Who made the connect whose client end is `client`, when it reached
    /// a listen address without being rewritten (the proxy's accepted
    /// peer). Entries are kept in an LRU, not removed at close: check
    /// `Identity::at_ns` against the accept.
    pub fn peer(&self, client: SocketAddr) -> Result<Option<Identity>, KernelError> {
        Ok(self
            .store
            .peer(&AddrKey::new(client))?
            .map(|w| Identity::from(&w)))
    }

    /// Closes client sockets of this network namespace that the programs
    /// rewrote to `backend` and that `filter` selects; how many were
    /// closed. Blocking (sock_diag).
    pub fn destroy_to(&self, backend: SocketAddr, filter: Filter) -> Result<usize, KernelError> {
        let fail = |source| KernelError::Destroy {
            addr: backend,
            source,
        };
        let mut found = Vec::new();
        for &family in destroy::families(backend) {
            found.extend(destroy::dump(family).map_err(fail)?);
        }
        let mut conns = std::collections::BTreeMap::new();
        for f in &found {
            if let Some(c) = self.store.conn(f.cookie())? {
                conns.insert(f.cookie(), c);
            }
        }
        let backends = &self.state.backends;
        let chosen = destroy::select(
            &found,
            backend,
            filter,
            |cookie| conns.get(&cookie).copied(),
            |i| {
                backends
                    .get(i as usize)
                    .filter(|b| b.family != 0)
                    .map(|b| b.socket_addr())
            },
        );
        destroy::destroy(&chosen).map_err(fail)
    }

    /// Detaches the programs and removes every pin of this instance.
    pub fn detach(self) -> Result<Detached, KernelError> {
        let Plane {
            instance, store, ..
        } = self;
        drop(store);
        loader::detach(&instance)
    }
}

/// Detaches the instance with these listen addresses and removes its pins
/// (`cplb dataplane detach`): for uninstalling, or going back to proxy
/// mode. Works in a build without the programs.
pub fn detach(bpffs: &Path, listen: &[SocketAddr]) -> Result<Detached, KernelError> {
    loader::detach(&Instance::new(bpffs, listen))
}
