//! The data plane in force, decided at start-up from `dataplane.mode`,
//! and the kernel's maps kept in step with the snapshot (docs/kernel.md).
//! - `tables`: the kernel's tables from a snapshot, through `choice`.
//! - `sync`: the supervised task that publishes them, closes evicted
//!   masters' rewritten connections and reads the kernel's counters into
//!   the proxy's metrics.
//! - `failback`: fail-back for rewritten connections, on the proxy's
//!   schedule.
//!
//! In every mode the listener stays: a connect the programs leave alone
//! (no usable master, another network namespace, no programs) reaches
//! the proxy.

mod failback;
pub(crate) mod sync;
mod tables;

use crate::config::Config;
use crate::kernel::config::Mode;
use crate::kernel::{self, KernelError, Plane, Settings};
use crate::logfmt::Chain;
use crate::shared::InForce;

/// What start-up chose.
pub(crate) struct Started {
    pub in_force: InForce,
    pub plane: Option<Plane>,
}

/// `kernel`: opens the plane or refuses (naming every missing piece);
/// `auto`: the plane where it opens, else the proxy with one warning
/// saying why; `proxy`: the proxy, and what an earlier start in kernel
/// mode left pinned for these listen addresses is detached, so a switch
/// back to proxy takes effect at the restart. Blocking (BPF system calls).
pub(crate) fn start(config: &Config) -> Result<Started, KernelError> {
    let d = &config.dataplane;
    let settings = Settings {
        bpffs: d.bpffs.clone(),
        cgroup: d.cgroup.clone(),
        listen: config.listen.clone(),
    };
    let proxy = |why_proxy| Started {
        in_force: InForce {
            configured: d.mode,
            kernel: false,
            why_proxy,
            instance: None,
        },
        plane: None,
    };
    match d.mode {
        Mode::Proxy => {
            detach_leftover(&settings);
            Ok(proxy(None))
        }
        Mode::Kernel => Ok(opened(d.mode, Plane::open(&settings)?)),
        Mode::Auto => match Plane::open(&settings) {
            Ok(plane) => Ok(opened(d.mode, plane)),
            Err(e) => {
                let why = Chain(&e).to_string();
                tracing::warn!(reason = %why, "dataplane.mode is auto and the kernel data plane cannot run here: every connection goes through the proxy");
                Ok(proxy(Some(why)))
            }
        },
    }
}

fn opened(mode: Mode, plane: Plane) -> Started {
    let instance = plane.instance().name().to_string();
    tracing::info!(
        mode = mode.as_str(),
        instance = %instance,
        pins = %plane.instance().dir().display(),
        adopted = plane.adopted(),
        replaced_maps = ?plane.replaced_maps(),
        "kernel data plane attached: connects to the listen addresses are balanced in the kernel"
    );
    Started {
        in_force: InForce {
            configured: mode,
            kernel: true,
            why_proxy: None,
            instance: Some(instance),
        },
        plane: Some(plane),
    }
}

/// Detaches the pins an earlier kernel-mode start of this instance left.
fn detach_leftover(settings: &Settings) {
    let instance = kernel::Instance::new(&settings.bpffs, &settings.listen);
    if !instance.dir().exists() {
        return;
    }
    match kernel::detach(&settings.bpffs, &settings.listen) {
        Ok(d) => tracing::info!(
            pins = %instance.dir().display(),
            links = d.links,
            maps = d.maps,
            "dataplane.mode is proxy: detached the kernel data plane an earlier start left"
        ),
        Err(e) => tracing::warn!(
            pins = %instance.dir().display(),
            error = %Chain(&e),
            "dataplane.mode is proxy, but the kernel data plane an earlier start left could not be detached: it still rewrites connects to the last masters it was given; run `cplb dataplane detach`"
        ),
    }
}
