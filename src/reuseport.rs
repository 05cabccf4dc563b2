//! Who else listens on a `listen` address that cplb just joined with
//! SO_REUSEPORT. The kernel then splits new connections between the
//! sockets without a word. That is the intended handover when the other
//! process is an older cplb (hitless restart) or the nginx being retired,
//! and a surprise otherwise; either way it is logged once, at start-up.
//!
//! Best effort, from /proc: the LISTEN sockets on the address come from
//! `net/tcp{,6}` (this network namespace), their owners from `/proc/*/fd`
//! (only the processes this one may see: same PID namespace, same user or
//! root). Nothing here can fail start-up, nor hold it up: the walk runs on
//! a thread of its own, waited for a bounded time (see `server`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// Process names for which sharing the address is the intended handover.
const HANDOVER_FROM: [&str; 2] = ["cplb", "nginx"];
/// At most this many processes are named in the log line.
const MAX_NAMED: usize = 8;

/// The inodes of our own sockets, from `fstat` (no `/proc` walk), for
/// `report` to tell them from others.
pub(crate) fn inodes(ours: &[std::net::TcpListener]) -> BTreeSet<u64> {
    ours.iter()
        .filter_map(|l| {
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: the fd is an open socket `l` owns for the whole call,
            // and `st` is writable memory of the size fstat fills.
            let rc = unsafe { libc::fstat(l.as_raw_fd(), st.as_mut_ptr()) };
            // SAFETY: fstat returned 0, so it filled `st`.
            (rc == 0).then(|| unsafe { st.assume_init() }.st_ino)
        })
        .collect()
}

/// Logs one line when a socket other than `ours` (their inodes) listens on
/// `addr`. Reads `/proc`: call it off the control-plane thread.
pub(crate) fn report(addr: SocketAddr, ours: &BTreeSet<u64>) {
    let others: Vec<(u64, u32)> = listeners_on(addr)
        .into_iter()
        .filter(|(inode, _)| !ours.contains(inode))
        .collect();
    if others.is_empty() {
        return;
    }
    let inodes: BTreeSet<u64> = others.iter().map(|(i, _)| *i).collect();
    let owners = owners_of(&inodes);
    if owners.is_empty() {
        // One uid: the kernel shares a port only between sockets of one user.
        let uid = others[0].1;
        tracing::warn!(
            address = %addr,
            uid,
            "another socket already listens on this address with SO_REUSEPORT and its process is not visible from here (unidentified): the kernel splits new connections between it and cplb; a handover if it is an older cplb, unexpected otherwise"
        );
        return;
    }
    let processes = owners
        .iter()
        .take(MAX_NAMED)
        .map(|(pid, comm)| format!("{comm} (pid {pid})"))
        .collect::<Vec<_>>()
        .join(", ");
    if owners
        .iter()
        .all(|(_, comm)| HANDOVER_FROM.contains(&comm.as_str()))
    {
        tracing::info!(
            address = %addr,
            processes,
            "handover: an older process still listens on this address with SO_REUSEPORT; the kernel splits new connections between it and cplb until it closes its sockets"
        );
    } else {
        tracing::warn!(
            address = %addr,
            processes,
            "unexpected: another process already listens on this address with SO_REUSEPORT; the kernel splits new connections between it and cplb"
        );
    }
}

/// `(inode, uid)` of every LISTEN socket bound exactly to `addr` in this
/// thread's network namespace.
fn listeners_on(addr: SocketAddr) -> Vec<(u64, u32)> {
    let file = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    table(file)
        .filter(|l| l.listening && l.local == addr && l.inode != 0)
        .map(|l| (l.inode, l.uid))
        .collect()
}

/// The rows of `/proc/net/<file>` (`tcp` or `tcp6`).
fn table(file: &str) -> impl Iterator<Item = Line> {
    // thread-self: a thread may have its own network namespace (tests).
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/net/{file}")))
        .unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(parse_line)
        .collect::<Vec<_>>()
        .into_iter()
}

/// Who holds `addr`, an address cplb could not bind (EADDRINUSE): the
/// listening sockets on its port whose address overlaps it (the same, or
/// either one a wildcard), with their uid and, where visible, process.
/// Reads `/proc`: call it off the control-plane thread.
pub(crate) fn holders(addr: SocketAddr) -> Holders {
    let overlaps = |l: &Line| {
        l.listening
            && l.inode != 0
            && l.local.port() == addr.port()
            && (l.local.ip() == addr.ip()
                || l.local.ip().is_unspecified()
                || addr.ip().is_unspecified())
    };
    // An IPv6 wildcard socket takes IPv4 too, unless it is v6-only.
    let sockets: Vec<Line> = table("tcp")
        .chain(table("tcp6"))
        .filter(|l| {
            overlaps(l) && (l.local.is_ipv4() == addr.is_ipv4() || l.local.ip().is_unspecified())
        })
        .collect();
    let inodes = sockets.iter().map(|l| l.inode).collect();
    let owners = owners_by_inode(&inodes);
    Holders {
        sockets: sockets
            .into_iter()
            .map(|l| {
                let procs = owners.get(&l.inode).cloned().unwrap_or_default();
                (l.local, l.uid, procs)
            })
            .collect(),
    }
}

/// Processes as `(pid, comm)`.
type Processes = BTreeSet<(u32, String)>;

/// The sockets holding an address, for an error message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// Each socket's address, uid, and the visible processes holding it.
    sockets: Vec<(SocketAddr, u32, Processes)>,
}

impl std::fmt::Display for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sockets.is_empty() {
            return f.write_str(
                "no listening socket on it is visible here (a socket bound without listening, or one of another network namespace)",
            );
        }
        f.write_str("it is held by ")?;
        for (i, (local, uid, procs)) in self.sockets.iter().take(MAX_NAMED).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if procs.is_empty() {
                write!(
                    f,
                    "a socket of uid {uid} on {local} whose process is not visible from here"
                )?;
            }
            for (j, (pid, comm)) in procs.iter().take(MAX_NAMED).enumerate() {
                if j > 0 {
                    f.write_str(", ")?;
                }
                write!(
                    f,
                    "{} (pid {pid}, uid {uid}) on {local}",
                    crate::logfmt::Escaped(comm)
                )?;
            }
        }
        // Sharing is what cplb's own restarts use; say why this one was not.
        f.write_str(" (cplb shares a port only with SO_REUSEPORT sockets of its own uid)")
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Line {
    local: SocketAddr,
    listening: bool,
    uid: u32,
    inode: u64,
}

/// One row of /proc/net/tcp or tcp6:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_line(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, state, uid, inode) = (f.get(1)?, f.get(3)?, f.get(7)?, f.get(9)?);
    let (ip, port) = local.split_once(':')?;
    Some(Line {
        local: SocketAddr::new(parse_ip(ip)?, u16::from_str_radix(port, 16).ok()?),
        listening: *state == "0A",
        uid: uid.parse().ok()?,
        inode: inode.parse().ok()?,
    })
}

/// The kernel prints the address as 32-bit words in host byte order, so
/// each word's native-endian bytes are the address bytes in order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The inode of the socket a `/proc/<pid>/fd/<n>` link points to.
fn socket_inode(link: &str) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let t = target.to_str()?;
    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// `(pid, comm)` of the visible processes holding any of `inodes`.
fn owners_of(inodes: &BTreeSet<u64>) -> Processes {
    owners_by_inode(inodes).into_values().flatten().collect()
}

/// The visible processes holding each of `inodes`, as `(pid, comm)`.
fn owners_by_inode(inodes: &BTreeSet<u64>) -> BTreeMap<u64, Processes> {
    let mut out = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Another user's fds are unreadable without root: skipped.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let held: BTreeSet<u64> = fds
            .flatten()
            .filter_map(|fd| fd.path().to_str().and_then(socket_inode))
            .filter(|i| inodes.contains(i))
            .collect();
        if !held.is_empty() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_else(|_| "?".into());
            for i in held {
                out.entry(i)
                    .or_insert_with(BTreeSet::new)
                    .insert((pid, comm.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_line(v4),
            Some(Line {
                local: "127.0.0.1:8080".parse().unwrap(),
                listening: true,
                uid: 0,
                inode: 12345,
            })
        );
        let v6 = "   1: 00000000000000000000000001000000:192B 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000  65532        0 777 1 0000000000000000 100 0 0 10 0";
        let l = parse_line(v6).unwrap();
        assert_eq!(l.local, "[::1]:6443".parse().unwrap());
        assert!(!l.listening);
        assert_eq!((l.uid, l.inode), (65532, 777));
        assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
        assert_eq!(parse_line(""), None);
    }

    /// The parser agrees with the kernel: a socket this test opens is found
    /// at its address, with its own inode.
    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inode = socket_inode(&format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        assert_eq!(inodes(std::slice::from_ref(&l)), BTreeSet::from([inode]));
        assert!(listeners_on(addr).iter().any(|(i, _)| *i == inode));
        let owners = owners_of(&BTreeSet::from([inode]));
        assert!(owners.iter().any(|(pid, _)| *pid == std::process::id()));
    }

    /// The holder of a taken address is this process, named with its uid,
    /// found through the exact address and through a wildcard.
    #[test]
    fn names_the_holder_of_a_taken_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let named = format!(
            "{} (pid {}, uid {uid}) on {addr}",
            comm.trim_end(),
            std::process::id()
        );
        for asked in [
            addr,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
        ] {
            let h = holders(asked).to_string();
            assert!(h.starts_with("it is held by ") && h.contains(&named), "{h}");
        }
        drop(l);
        let free = holders(addr).to_string();
        assert!(free.starts_with("no listening socket"), "{free}");
    }
}
