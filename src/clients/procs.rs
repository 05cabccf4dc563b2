//! From a socket inode to the process holding it, through `/proc/*/fd`
//! (as `ss -p` does), and that process's name and cgroup. Root may read
//! every process's fd directory; another user only its own, so an
//! unprivileged cplb names other users' clients by uid (`Visibility`).
//!
//! Blocking file reads: the resolver thread's, never a connection's task.

use std::collections::{HashMap, VecDeque};
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

impl Finder {
    /// `pid` for many sockets at once (the resolver's queue under a flood
    /// of new connections): each process's descriptors are read once for
    /// all of them, recent processes first, then every process if some
    /// are still not found.
    pub(crate) fn pids(&mut self, wanted: &[Option<(u32, u32)>]) -> Vec<Option<u32>> {
        if let [Some((inode, uid))] = wanted {
            return vec![self.pid(*inode, *uid)];
        }
        let mut out = vec![None; wanted.len()];
        let mut left: HashMap<u32, usize> = wanted
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.filter(|(_, uid)| self.full || *uid == self.euid)
                    .map(|(inode, _)| (inode, i))
            })
            .collect();
        let recent: Vec<u32> = self.recent.iter().map(|r| r.pid).collect();
        for pid in &recent {
            if left.is_empty() {
                break;
            }
            self.take_from(*pid, &mut left, &mut out);
        }
        if !left.is_empty()
            && let Ok(dir) = fs::read_dir("/proc")
        {
            let all: Vec<u32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| !recent.contains(p))
                .filter(|p| self.full || owner(*p) == Some(self.euid))
                .collect();
            for pid in all {
                if left.is_empty() {
                    break;
                }
                self.take_from(pid, &mut left, &mut out);
            }
        }
        out
    }

    /// Reads `pid`'s descriptors once: every socket in `left` found there
    /// is `pid`'s, and `pid` becomes (or stays) a recent process.
    fn take_from(&mut self, pid: u32, left: &mut HashMap<u32, usize>, out: &mut [Option<u32>]) {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return;
        };
        let mut fds = Vec::new();
        for fd in dir.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok());
            if let Some(i) = inode.and_then(|n| left.remove(&n)) {
                out[i] = Some(pid);
                fds.extend(fd.file_name().to_str().and_then(|f| f.parse::<u32>().ok()));
            }
            if left.is_empty() {
                break;
            }
        }
        if fds.is_empty() {
            return;
        }
        let mut r = match self.recent.iter().position(|r| r.pid == pid) {
            Some(i) => self.recent.remove(i).expect("an index of recent"),
            None => {
                if self.recent.len() == RECENT {
                    self.recent.pop_back();
                }
                Recent {
                    pid,
                    fds: VecDeque::with_capacity(FDS),
                }
            }
        };
        for fd in fds {
            r.remember(fd);
        }
        self.recent.push_front(r);
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
