//! The system calls aya 0.14 does not offer, in one audited place: link
//! update and detach, the feature probes, the network namespace cookie,
//! `statfs`, the monotonic clock and the host's addresses. Each `bpf(2)`
//! command takes a `#[repr(C)]` struct laid out as its part of
//! `union bpf_attr` (include/uapi/linux/bpf.h), passed with its own size:
//! the kernel reads that many bytes and treats the rest as zero.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

pub(crate) const PROG_TYPE_SOCK_OPS: u32 = 13;
pub(crate) const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub(crate) const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
pub(crate) const ATTACH_CGROUP_INET4_CONNECT: u32 = 10;
pub(crate) const ATTACH_CGROUP_INET4_GETPEERNAME: u32 = 29;

/// `SO_NETNS_COOKIE` (Linux 5.14) on x86_64 and arm64; the libc crate does
/// not name it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Runs `bpf(cmd, attr, size_of::<T>())`; a non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points at a live, initialised `T` for the whole call,
    // and the size passed is its own, so the kernel reads only those
    // bytes. Every `T` used here is a `#[repr(C)]` struct of integers that
    // mirrors the union member of `cmd`, without implicit padding; the
    // addresses some carry (a path, instructions, a licence) point at
    // buffers the caller keeps alive across this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else
    // owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Atomically replaces the program of a link (`BPF_LINK_UPDATE`): the
/// hook runs the old program or the new one, never neither.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

#[repr(C)]
struct LinkDetach {
    link_fd: u32,
}

/// Detaches a link from its hook now, even while other descriptors of it
/// are open (`BPF_LINK_DETACH`, Linux 5.9).
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &attr).map(drop)
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `r0 = 1; exit` as a program of `prog_type` for `attach_type`: the
/// kernel refuses an attach type it does not know (`EINVAL`).
pub(crate) fn probe_program(prog_type: u32, attach_type: u32) -> io::Result<OwnedFd> {
    // mov64 r0, 1; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"Apache-2.0";
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"cplb_probe\0\0\0\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: attach_type,
    };
    let fd = bpf(BPF_PROG_LOAD, &attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else
    // owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Whether the kernel has BPF links for cgroups (Linux 5.7): asked to
/// link `prog` to no cgroup at all, it answers `EBADF` (it got as far as
/// the cgroup) where an older one answers `EINVAL`. Nothing is attached.
pub(crate) fn probe_cgroup_links(prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: u32::MAX,
        attach_type,
        flags: 0,
    };
    match bpf(BPF_LINK_CREATE, &attr) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(e),
        Ok(fd) => {
            // SAFETY: a descriptor the kernel just returned; closed here.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(())
        }
    }
}

/// The file system magic of `path` (`statfs(2)`'s `f_type`).
pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_type as u64)
}

/// This process's network namespace cookie, as `bpf_get_netns_cookie()`
/// reports it for sockets in the same namespace.
pub(crate) fn netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the socket is open for the call; `cookie` and `len` are
    // writable and `len` is `cookie`'s size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `CLOCK_MONOTONIC` in nanoseconds: `bpf_ktime_get_ns()`'s clock.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The addresses of this network namespace's interfaces.
pub(crate) fn local_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a writable pointer; on success getifaddrs sets it
    // to a list that freeifaddrs below releases.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a sockaddr whose
            // family says which sockaddr it is, and is at least that big.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: family AF_INET: a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn local_addrs_include_loopback() {
        let addrs = local_addrs().unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }

    #[test]
    fn netns_cookie_is_stable_in_one_namespace() {
        let a = netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(netns_cookie().unwrap(), a);
    }

    #[test]
    fn fs_magic_names_proc() {
        assert_eq!(fs_magic(Path::new("/proc")).unwrap(), 0x9fa0);
        assert!(fs_magic(Path::new("/no/such/dir")).is_err());
    }
}
