//! Loading, adopting, attaching and detaching an instance's programs,
//! links and maps.
//!
//! A start finds the instance's pins or creates them:
//! - maps pinned by an earlier start are reused (state and the rewritten
//!   set survive), unless their layout differs (an upgrade across `LAYOUT`):
//!   those are replaced by empty ones;
//! - each pinned link gets the new program by `BPF_LINK_UPDATE`, which
//!   swaps it atomically: no connect runs without a program;
//! - a missing link is created on the cgroup (a BPF link, so several
//!   instances attach side by side) and pinned; if the configured cgroup
//!   changed, the new link is attached before the old one is detached.
//!
//! Stopping the process leaves all of it attached and pinned; `detach`
//! removes it.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use aya::maps::{Array, Map, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};

use super::error::KernelError;
use super::maps::{self, ConfigValue, LAYOUT, SPECS, Spec};
use super::pins::Instance;
use super::preflight::{Missing, PreflightError, Ready};
use super::programs::{self, Hook, PROGRAMS, Prog};
use super::store::Store;
use super::{cgroup, sys};

pub(crate) struct Loaded {
    pub store: Store,
    /// Every link was found pinned and given the new program in place.
    pub adopted: bool,
    /// Pinned maps of another layout, replaced by empty ones.
    pub replaced: Vec<&'static str>,
}

/// What `detach` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detached {
    pub links: usize,
    pub maps: usize,
}

fn mkdir(dir: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(dir).map_err(|e| KernelError::io("create the directory", dir, e))
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Whether a pinned map still is what the programs declare.
fn fits(data: &MapData, spec: &Spec) -> bool {
    let Ok(info) = data.info() else {
        return false;
    };
    info.map_type().ok() == Some(spec.kind)
        && info.key_size() == spec.key_size
        && info.value_size() == spec.value_size
        && info.max_entries() == spec.max_entries
}

/// Removes the pinned maps that do not fit; their names.
fn drop_stale_maps(instance: &Instance) -> Result<Vec<&'static str>, KernelError> {
    // The layout number in a pinned config map covers what sizes cannot
    // tell: a field's meaning changed at the same size.
    let config = instance.map(maps::CONFIG);
    let layout_ok = !exists(&config)
        || MapData::from_pin(&config)
            .ok()
            .filter(|d| fits(d, &SPECS[0]))
            .and_then(|d| Array::<MapData, ConfigValue>::try_from(Map::Array(d)).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .is_some_and(|c| c.layout == LAYOUT || c.layout == 0);
    let mut stale = Vec::new();
    for spec in &SPECS {
        let path = instance.map(spec.name);
        if !exists(&path) {
            continue;
        }
        let ok = layout_ok && MapData::from_pin(&path).is_ok_and(|d| fits(&d, spec));
        if !ok {
            std::fs::remove_file(&path)
                .map_err(|e| KernelError::io("remove the stale pinned map", &path, e))?;
            stale.push(spec.name);
        }
    }
    Ok(stale)
}

/// Loads the programs of `instance` and makes them the ones attached.
pub(crate) fn load(instance: &Instance, ready: &Ready) -> Result<Loaded, KernelError> {
    let object = programs::object().ok_or_else(|| PreflightError {
        missing: vec![Missing::Programs],
    })?;
    mkdir(&instance.maps_dir())?;
    mkdir(&instance.links_dir())?;
    let replaced = drop_stale_maps(instance)?;

    let paths: Vec<_> = SPECS
        .iter()
        .map(|s| (s.name, instance.map(s.name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    // bpf_get_current_comm() needs CAP_PERFMON in a cgroup program.
    let record_comm = u32::from(ready.perfmon);
    loader.override_global("record_comm", &record_comm, true);
    let mut ebpf = loader.load(object).map_err(KernelError::Object)?;
    let mut store = Store::new(|name| ebpf.take_map(name))?;

    let cgroup_id = cgroup::id(&ready.cgroup)
        .map_err(|e| KernelError::io("read the cgroup", &ready.cgroup, e))?;
    let before = store.config()?;
    let moved = before.cgroup_id != 0 && before.cgroup_id != cgroup_id;
    // Before any program can run with these maps: the netns cookie gates
    // every rewrite, so a new instance rewrites nothing until it is set,
    // and until a publish fills the services.
    store.set_config(ConfigValue {
        netns_cookie: ready.netns_cookie,
        cgroup_id,
        layout: LAYOUT,
        pad: 0,
    })?;

    let cgroup = File::open(&ready.cgroup)
        .map_err(|e| KernelError::io("open the cgroup", &ready.cgroup, e))?;
    let mut adopted = true;
    for p in &PROGRAMS {
        let pin = instance.link(p.link);
        let update = exists(&pin) && !moved;
        adopted &= update;
        install(&mut ebpf, p, &pin, update, &cgroup, &ready.cgroup)?;
    }
    Ok(Loaded {
        store,
        adopted,
        replaced,
    })
}

/// Loads one program, then either gives it to its pinned link or attaches
/// it with a new pinned link.
fn install(
    ebpf: &mut Ebpf,
    p: &Prog,
    pin: &Path,
    update: bool,
    cgroup: &File,
    cgroup_path: &Path,
) -> Result<(), KernelError> {
    let program = ebpf
        .program_mut(p.function)
        .ok_or(KernelError::NoProgram(p.function))?;
    let loaded = |source| KernelError::Load {
        program: p.function,
        source,
    };
    let attached = |source| KernelError::Attach {
        program: p.function,
        cgroup: cgroup_path.to_path_buf(),
        source,
    };
    // CgroupSockAddr and SockOps share these methods but no trait.
    macro_rules! install_as {
        ($ty:ty) => {{
            let prog: &mut $ty = program.try_into().map_err(loaded)?;
            prog.load().map_err(loaded)?;
            if update {
                let link = sys::obj_get(pin)
                    .map_err(|e| KernelError::io("open the pinned link", pin, e))?;
                let fd = prog.fd().map_err(loaded)?;
                return sys::link_update(link.as_fd(), fd.as_fd()).map_err(|source| {
                    KernelError::Update {
                        path: pin.to_path_buf(),
                        source,
                    }
                });
            }
            // Single: no BPF_F_ALLOW_* flag; a cgroup link always runs
            // beside the other programs of the hook.
            let id = prog
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(attached)?;
            let link = prog.take_link(id).map_err(attached)?;
            FdLink::try_from(link).map_err(|source| KernelError::Link {
                program: p.function,
                source,
            })?
        }};
    }
    let link = match p.hook {
        Hook::SockAddr => install_as!(CgroupSockAddr),
        Hook::SockOps => install_as!(SockOps),
    };
    // The configured cgroup changed: the new link runs already.
    if exists(pin) {
        detach_pin(pin)?;
    }
    link.pin(pin).map_err(|source| KernelError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Detaches a pinned link from its hook and removes the pin.
fn detach_pin(pin: &Path) -> Result<(), KernelError> {
    let link = sys::obj_get(pin).map_err(|e| KernelError::io("open the pinned link", pin, e))?;
    match sys::link_detach(link.as_fd()) {
        // EINVAL: a kernel before 5.9 has no BPF_LINK_DETACH; removing the
        // pin and closing the last descriptor detaches it.
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(source) => {
            return Err(KernelError::Detach {
                path: pin.to_path_buf(),
                source,
            });
        }
    }
    std::fs::remove_file(pin).map_err(|e| KernelError::io("remove the pinned link", pin, e))
}

/// Removes every link and pin of `instance`: its programs stop and its
/// maps are freed once nothing else holds them.
pub(crate) fn detach(instance: &Instance) -> Result<Detached, KernelError> {
    let mut done = Detached::default();
    // The rewriting programs first: no connect is rewritten without the
    // programs that follow it.
    for p in PROGRAMS.iter().rev() {
        let pin = instance.link(p.link);
        if exists(&pin) {
            detach_pin(&pin)?;
            done.links += 1;
        }
    }
    for spec in &SPECS {
        let pin = instance.map(spec.name);
        if exists(&pin) {
            std::fs::remove_file(&pin)
                .map_err(|e| KernelError::io("remove the pinned map", &pin, e))?;
            done.maps += 1;
        }
    }
    for dir in [
        instance.links_dir(),
        instance.maps_dir(),
        instance.dir().to_path_buf(),
    ] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KernelError::io("remove the directory", dir, e)),
        }
    }
    // {bpffs}/cplb stays while another instance pins there.
    if let Some(parent) = instance.dir().parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(done)
}
