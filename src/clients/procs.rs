//! From a socket inode to the process holding it, through `/proc/*/fd`
//! (as `ss -p` does), and that process's name and cgroup. Root may read
//! every process's fd directory; another user only its own, so an
//! unprivileged cplb names other users' clients by uid (`Visibility`).
//!
//! Blocking file reads: the resolver thread's, never a connection's task.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::MetadataExt;

/// What this process may see of other processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// Root: every client's process, cgroup and pod.
    Full,
    /// Only the uid of other users' clients, and why.
    UidOnly(String),
}

impl Visibility {
    pub(crate) fn of_this_process() -> Visibility {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            return Visibility::Full;
        }
        Visibility::UidOnly(format!(
            "cplb runs as uid {euid}, not root: other users' /proc/PID/fd cannot be read, so their clients are named by uid"
        ))
    }
}

/// Pids recently found holding a client socket, tried before a full
/// scan: a node's clients are a few long-lived processes.
const RECENT: usize = 16;
/// Descriptor numbers remembered per recent pid.
const FDS: usize = 32;

/// A recent client process and where its client sockets were: a new
/// socket usually takes the number after the last one, or one freed by a
/// closed connection, so these are looked at first (a process holding
/// thousands of descriptors is then not read whole for each connection).
struct Recent {
    pid: u32,
    fds: VecDeque<u32>,
}

impl Recent {
    fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        let next = self.fds.front().map(|f| f + 1);
        next.into_iter()
            .chain(next.map(|f| f + 1))
            .chain(self.fds.iter().copied())
    }

    fn remember(&mut self, fd: u32) {
        if let Some(i) = self.fds.iter().position(|f| *f == fd) {
            self.fds.remove(i);
        } else if self.fds.len() == FDS {
            self.fds.pop_back();
        }
        self.fds.push_front(fd);
    }
}

pub(crate) struct Finder {
    recent: VecDeque<Recent>,
    euid: u32,
    full: bool,
}

impl Finder {
    pub(crate) fn new(visibility: &Visibility) -> Finder {
        Finder {
            recent: VecDeque::with_capacity(RECENT),
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
            full: *visibility == Visibility::Full,
        }
    }

    /// The process holding socket `inode`, owned by `uid`; `None` if it
    /// may not be seen or has gone.
    pub(crate) fn pid(&mut self, inode: u32, uid: u32) -> Option<u32> {
        if !self.full && uid != self.euid {
            return None;
        }
        let link = format!("socket:[{inode}]");
        // First the likely descriptors of recent processes, then all of
        // theirs, then every process.
        let found = self
            .recent
            .iter()
            .enumerate()
            .find_map(|(i, r)| {
                r.candidates()
                    .find(|fd| is(r.pid, *fd, &link))
                    .map(|fd| (i, fd))
            })
            .or_else(|| {
                self.recent
                    .iter()
                    .enumerate()
                    .find_map(|(i, r)| holds(r.pid, &link).map(|fd| (i, fd)))
            });
        if let Some((i, fd)) = found {
            let mut r = self.recent.remove(i)?;
            r.remember(fd);
            let pid = r.pid;
            self.recent.push_front(r);
            return Some(pid);
        }
        let (pid, fd) = fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| !self.recent.iter().any(|r| r.pid == *p))
            .filter(|p| self.full || owner(*p) == Some(self.euid))
            .find_map(|p| holds(p, &link).map(|fd| (p, fd)))?;
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        let mut r = Recent {
            pid,
            fds: VecDeque::with_capacity(FDS),
        };
        r.remember(fd);
        self.recent.push_front(r);
        Some(pid)
    }
}

fn owner(pid: u32) -> Option<u32> {
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Whether descriptor `fd` of `pid` is the socket `link` names.
fn is(pid: u32, fd: u32, link: &str) -> bool {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|t| t.as_os_str() == link)
}

/// Which of `pid`'s descriptors is the socket `link` names.
fn holds(pid: u32, link: &str) -> Option<u32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == link))
        .and_then(|fd| fd.file_name().to_str()?.parse().ok())
}

/// `/proc/PID/comm`, without its newline.
pub(crate) fn comm(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let s = s.trim_end_matches('\n');
    (!s.is_empty()).then(|| s.to_owned())
}

/// The cgroup v2 path: the `0::` line of `/proc/PID/cgroup`.
pub(crate) fn cgroup(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_by_its_socket() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd()))
            .unwrap()
            .ino() as u32;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut f = Finder::new(&Visibility::of_this_process());
        assert_eq!(f.pid(inode, uid), Some(std::process::id()));
        // Again, from the recent list.
        assert_eq!(f.pid(inode, uid), Some(std::process::id()));
        assert!(comm(std::process::id()).is_some());
    }
}
