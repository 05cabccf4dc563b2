//! Before loading anything: is every piece the kernel data plane needs
//! here? Each missing piece is named with what to do about it, all of them
//! at once, so an operator fixes them in one go.

use std::path::{Path, PathBuf};

use super::{cgroup, destroy, programs, sys};

/// Capability numbers (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// One missing piece.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error(
        "built without its kernel programs: clang and libbpf-dev were not found when cplb was built"
    )]
    Programs,
    #[error("missing capability {name}: {why}")]
    Capability {
        name: &'static str,
        why: &'static str,
    },
    #[error(
        "{path} is not a BPF file system (bpffs): mount one with `mount -t bpf bpf {path}`, or set dataplane.bpffs"
    )]
    Bpffs { path: PathBuf },
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo): mount one, or set dataplane.cgroup"
    )]
    NoCgroup2,
    #[error(
        "{path} is not a cgroup v2 directory: set dataplane.cgroup to one (or \"\" for the cgroup2 root)"
    )]
    NotCgroup2 { path: PathBuf },
    /// With the capabilities held, EPERM is no missing feature: something
    /// outside the kernel's capability checks refused the system call.
    #[error(
        "loading a BPF program was refused (EPERM) although cplb has its capabilities: a seccomp profile or a security module blocks bpf() (a container engine's default seccomp profile allows it only with CAP_SYS_ADMIN: run cplb with seccomp unconfined, in Kubernetes securityContext.seccompProfile.type: Unconfined)"
    )]
    Refused {
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel lacks {feature} ({since})")]
    Feature {
        feature: &'static str,
        since: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Every missing piece, in the order found.
#[derive(Debug)]
pub struct PreflightError {
    pub missing: Vec<Missing>,
}

impl std::fmt::Display for PreflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kernel data plane cannot start: ")?;
        for (i, m) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PreflightError {}

/// What preflight found, for the loader.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub cgroup: PathBuf,
    pub netns_cookie: u64,
    /// CAP_PERFMON (or CAP_SYS_ADMIN): the programs may record the
    /// client's `comm`.
    pub perfmon: bool,
}

/// The effective capability set from a /proc/<pid>/status text.
pub(crate) fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The capabilities missing from `eff` (see docs/kernel.md for how the
/// minimum was found).
pub(crate) fn missing_caps(eff: u64) -> Vec<Missing> {
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut out = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push(Missing::Capability {
            name: "CAP_BPF",
            why: "needed to create BPF maps and load the programs (CAP_SYS_ADMIN also does)",
        });
    }
    if !has(CAP_NET_ADMIN) {
        out.push(Missing::Capability {
            name: "CAP_NET_ADMIN",
            why: "needed to load and attach socket programs and to close rewritten connections",
        });
    }
    out
}

/// Checks everything, and returns all that is missing.
pub fn check(bpffs: &Path, cgroup_dir: Option<&Path>) -> Result<(), PreflightError> {
    run(bpffs, cgroup_dir).map(drop)
}

pub(crate) fn run(bpffs: &Path, cgroup_dir: Option<&Path>) -> Result<Ready, PreflightError> {
    let mut missing = Vec::new();
    if programs::object().is_none() {
        missing.push(Missing::Programs);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = effective_caps(&status).unwrap_or(0);
    let perfmon = eff & ((1 << CAP_PERFMON) | (1 << CAP_SYS_ADMIN)) != 0;
    let caps = missing_caps(eff);
    let capable = caps.is_empty();
    missing.extend(caps);

    if sys::fs_magic(bpffs).ok() != Some(BPF_FS_MAGIC) {
        missing.push(Missing::Bpffs {
            path: bpffs.to_path_buf(),
        });
    }
    let cgroup = cgroup::resolve(cgroup_dir);
    match &cgroup {
        None => missing.push(Missing::NoCgroup2),
        Some(dir) if sys::fs_magic(dir).ok() != Some(CGROUP2_SUPER_MAGIC) => {
            missing.push(Missing::NotCgroup2 { path: dir.clone() })
        }
        Some(_) => {}
    }
    let cookie = match sys::netns_cookie() {
        Ok(c) => Some(c),
        Err(source) => {
            missing.push(Missing::Feature {
                feature: "network namespace cookies (SO_NETNS_COOKIE)",
                since: "Linux 5.14",
                source,
            });
            None
        }
    };
    // Without the capabilities every probe below would fail with EPERM
    // and name a feature the kernel may well have.
    if capable {
        missing.extend(features());
    }
    match (missing.is_empty(), cgroup, cookie) {
        (true, Some(cgroup), Some(netns_cookie)) => Ok(Ready {
            cgroup,
            netns_cookie,
            perfmon,
        }),
        _ => Err(PreflightError { missing }),
    }
}

/// Whether a probe's error is a refusal (EPERM), not an unknown program
/// or attach type (EINVAL): asked only once the capabilities are known held.
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EPERM)
}

/// The kernel features, each probed with the smallest program that needs
/// it (nothing is attached).
fn features() -> Vec<Missing> {
    let mut out = Vec::new();
    let feature = |feature, since, source| Missing::Feature {
        feature,
        since,
        source,
    };
    match sys::probe_program(
        sys::PROG_TYPE_CGROUP_SOCK_ADDR,
        sys::ATTACH_CGROUP_INET4_CONNECT,
    ) {
        // Every probe below would be refused alike, naming features the
        // kernel may well have.
        Err(source) if refused(&source) => return vec![Missing::Refused { source }],
        Ok(prog) => {
            use std::os::fd::AsFd;
            if let Err(e) = sys::probe_cgroup_links(prog.as_fd(), sys::ATTACH_CGROUP_INET4_CONNECT)
            {
                out.push(feature("BPF links for cgroups", "Linux 5.7", e));
            }
        }
        Err(e) => out.push(feature(
            "cgroup connect hooks (cgroup/connect4)",
            "Linux 4.17",
            e,
        )),
    }
    if let Err(e) = sys::probe_program(
        sys::PROG_TYPE_CGROUP_SOCK_ADDR,
        sys::ATTACH_CGROUP_INET4_GETPEERNAME,
    ) {
        out.push(feature(
            "cgroup getpeername hooks (cgroup/getpeername4)",
            "Linux 5.8",
            e,
        ));
    }
    if let Err(e) = sys::probe_program(sys::PROG_TYPE_SOCK_OPS, sys::ATTACH_CGROUP_SOCK_OPS) {
        out.push(feature("sock_ops programs", "Linux 4.13", e));
    }
    if let Err(e) = destroy::probe() {
        out.push(feature(
            "sock_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)",
            "Linux 4.5, with CONFIG_INET_DIAG_DESTROY=y",
            e,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tcplb\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(effective_caps(status), Some(0x1fffeffffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn names_each_missing_capability() {
        let names = |eff: u64| -> Vec<&'static str> {
            missing_caps(eff)
                .into_iter()
                .map(|m| match m {
                    Missing::Capability { name, .. } => name,
                    other => panic!("{other}"),
                })
                .collect()
        };
        assert_eq!(names(0), ["CAP_BPF", "CAP_NET_ADMIN"]);
        assert!(names((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)).is_empty());
        assert!(names((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(names(1 << CAP_BPF), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn the_message_lists_every_piece() {
        let e = PreflightError {
            missing: vec![
                Missing::Programs,
                Missing::Bpffs {
                    path: "/sys/fs/bpf".into(),
                },
            ],
        };
        let text = e.to_string();
        assert!(text.contains("built without its kernel programs"), "{text}");
        assert!(text.contains("mount -t bpf bpf /sys/fs/bpf"), "{text}");
    }

    #[test]
    fn eperm_with_the_capabilities_is_a_refusal_not_a_missing_feature() {
        assert!(refused(&std::io::Error::from_raw_os_error(libc::EPERM)));
        assert!(!refused(&std::io::Error::from_raw_os_error(libc::EINVAL)));
        let e = PreflightError {
            missing: vec![Missing::Refused {
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            }],
        };
        let text = e.to_string();
        assert!(text.contains("seccomp"), "{text}");
        assert!(!text.contains("lacks"), "{text}");
    }

    #[test]
    fn a_plain_directory_is_no_bpffs() {
        let dir = std::env::temp_dir();
        let err = run(&dir, Some(&dir)).unwrap_err();
        assert!(
            err.missing
                .iter()
                .any(|m| matches!(m, Missing::Bpffs { path } if path == &dir)),
            "{err}"
        );
        assert!(
            err.missing
                .iter()
                .any(|m| matches!(m, Missing::NotCgroup2 { path } if path == &dir)),
            "{err}"
        );
        // A build without clang names that first (CPLB_BPF=off shows it).
        assert_eq!(
            matches!(err.missing[0], Missing::Programs),
            !programs::built_with_programs(),
            "{err}"
        );
    }
}
