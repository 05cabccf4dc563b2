//! What user space reads back: per-master counters and passive-health
//! marks, the rewritten connections, and who made a connect (issue 22).

use std::net::SocketAddr;
use std::time::Duration;

use super::maps::{
    BACKEND_RETIRED, BACKEND_USABLE, BackendValue, CONN_ESTABLISHED, ConnValue, HealthValue,
    IdentValue, NO_BACKEND, StatsValue, comm, decode,
};

/// One master as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    /// Its stable index in the maps.
    pub index: u16,
    /// As last published (`Backend::usable`).
    pub usable: bool,
    /// No longer published; kept for its counters until the index is
    /// reused.
    pub retired: bool,
    /// Rewritten connects that completed (SYN_SENT -> ESTABLISHED).
    pub connects: u64,
    /// Rewritten connects that failed (SYN_SENT -> CLOSE).
    pub failures: u64,
    /// Rewritten connections established and not yet closed.
    pub open: i64,
    /// How many times passive health marked it down.
    pub marked_down: u64,
    /// Failures in the current `fail_timeout` window.
    pub recent_failures: u32,
    /// Marked down by passive health, with no trial for this long.
    pub down_for: Option<Duration>,
    /// Marked down, and its `fail_timeout` has passed: the next connect
    /// that reaches it is its trial.
    pub trial_due: bool,
}

impl BackendStatus {
    pub(crate) fn new(
        index: u16,
        b: &BackendValue,
        h: &HealthValue,
        s: &StatsValue,
        now_ns: u64,
    ) -> BackendStatus {
        let down = h.down_until != 0;
        BackendStatus {
            addr: b.socket_addr(),
            index,
            usable: b.flags & BACKEND_USABLE != 0,
            retired: b.flags & BACKEND_RETIRED != 0,
            connects: s.connects,
            failures: s.failures,
            open: s.open,
            marked_down: s.marked_down,
            recent_failures: h.fails,
            down_for: (down && h.down_until > now_ns)
                .then(|| Duration::from_nanos(h.down_until - now_ns)),
            trial_due: down && h.down_until <= now_ns,
        }
    }
}

/// Who made a connect, recorded by the connect program in the client's
/// own context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The process (thread group) id.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup v2 id of the process (the inode of its cgroup directory).
    pub cgroup_id: u64,
    /// The thread's name (`comm`, at most 15 bytes); empty when cplb runs
    /// without CAP_PERFMON, which the programs need to read it.
    pub comm: String,
    /// When, on `CLOCK_MONOTONIC` (nanoseconds).
    pub at_ns: u64,
}

impl From<&IdentValue> for Identity {
    fn from(w: &IdentValue) -> Identity {
        Identity {
            pid: w.tgid,
            uid: w.uid,
            gid: w.gid,
            cgroup_id: w.cgroup_id,
            comm: comm(&w.comm),
            at_ns: w.at_ns,
        }
    }
}

/// One connection the programs rewrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub cookie: u64,
    /// The listen address the client asked for.
    pub listen: SocketAddr,
    pub backend: SocketAddr,
    /// Its slot's first candidate; `backend` differs when it was displaced.
    pub home: Option<SocketAddr>,
    pub established: bool,
    pub client: Identity,
}

impl Connection {
    /// `addr_of` names the master of an index.
    pub(crate) fn new(
        cookie: u64,
        c: &ConnValue,
        addr_of: impl Fn(u16) -> Option<SocketAddr>,
    ) -> Option<Connection> {
        let backend = addr_of(c.backend)?;
        Some(Connection {
            cookie,
            listen: decode(c.orig_addr, c.orig_port_be),
            backend,
            home: (c.home != NO_BACKEND).then(|| addr_of(c.home)).flatten(),
            established: c.flags & CONN_ESTABLISHED != 0,
            client: Identity::from(&c.who),
        })
    }

    /// Whether it runs away from its home (fail-back moves it).
    pub fn displaced(&self) -> bool {
        self.home.is_some_and(|h| h != self.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::super::maps::{AddrKey, addr16};
    use super::*;

    #[test]
    fn down_for_and_trial_follow_the_clock() {
        let b = BackendValue {
            addr: addr16("127.0.0.2".parse().unwrap()),
            port_be: 6443u16.to_be(),
            family: super::super::maps::AF_INET,
            flags: BACKEND_USABLE,
            ..BackendValue::default()
        };
        let h = HealthValue {
            down_until: 5_000_000_000,
            fails: 2,
            ..HealthValue::default()
        };
        let s = StatsValue {
            failures: 2,
            ..StatsValue::default()
        };
        let st = BackendStatus::new(3, &b, &h, &s, 2_000_000_000);
        assert_eq!(st.addr, "127.0.0.2:6443".parse().unwrap());
        assert_eq!(st.down_for, Some(Duration::from_secs(3)));
        assert!(!st.trial_due && st.usable && !st.retired);
        let later = BackendStatus::new(3, &b, &h, &s, 5_000_000_000);
        assert_eq!(later.down_for, None);
        assert!(later.trial_due);
        let up = BackendStatus::new(3, &b, &HealthValue::default(), &s, 0);
        assert!(up.down_for.is_none() && !up.trial_due);
    }

    #[test]
    fn a_connection_names_its_listen_address_and_home() {
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let key = AddrKey::new(listen);
        let c = ConnValue {
            orig_addr: key.addr,
            orig_port_be: key.port_be,
            backend: 1,
            home: 0,
            flags: CONN_ESTABLISHED,
            ..ConnValue::default()
        };
        let a: SocketAddr = "127.0.0.2:6443".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:6443".parse().unwrap();
        let conn = Connection::new(9, &c, |i| [a, b].get(i as usize).copied()).unwrap();
        assert_eq!(conn.listen, listen);
        assert_eq!((conn.backend, conn.home), (b, Some(a)));
        assert!(conn.displaced() && conn.established);
    }
}
