//! Closing connections cplb does not carry: the client sockets the
//! programs rewrote to a master, found with a sock_diag dump of this
//! (the host's) network namespace and closed with `SOCK_DESTROY`
//! (CONFIG_INET_DIAG_DESTROY; the client sees ECONNABORTED). Only a socket
//! whose cookie is in `cplb_conns` as rewritten is ever destroyed: a direct
//! connection to the same master, or another instance's, is never touched.
//!
//! Blocking: one dump per address family, then one request per socket.
//! Call it from a blocking task.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::message::SockDiagDestroy;
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::maps::{CONN_REWRITTEN, ConnValue, addr16};

/// Which of a master's rewritten connections to close.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    displaced_only: bool,
    home: Option<SocketAddr>,
    max: Option<usize>,
}

impl Filter {
    /// Every rewritten connection to the master (it died, drained, or was
    /// removed).
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Only those whose home is another master (fail-back).
    pub fn displaced() -> Filter {
        Filter {
            displaced_only: true,
            ..Filter::default()
        }
    }

    /// Only those whose home is `home` (fail-back to one master).
    pub fn home(mut self, home: SocketAddr) -> Filter {
        self.home = Some(home);
        self
    }

    /// At most `n` of them (fail-back at `max_per_second`).
    pub fn at_most(mut self, n: usize) -> Filter {
        self.max = Some(n);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    #[error("could not open a sock_diag netlink socket")]
    Socket(#[source] io::Error),
    #[error("the sock_diag dump of TCP sockets failed")]
    Dump(#[source] io::Error),
    #[error("could not read the kernel's sock_diag answer: {0}")]
    Decode(String),
    #[error("SOCK_DESTROY of the connection {local} -> {remote} failed")]
    Destroy {
        local: SocketAddr,
        remote: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A TCP socket from the dump.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub family: u8,
    pub id: SocketId,
}

impl Found {
    pub(crate) fn cookie(&self) -> u64 {
        cookie(&self.id.cookie)
    }

    fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.id.destination_address, self.id.destination_port)
    }

    fn local(&self) -> SocketAddr {
        SocketAddr::new(self.id.source_address, self.id.source_port)
    }
}

/// sock_diag's cookie: two `u32` halves in host order, low half first.
fn cookie(raw: &[u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Whether `found` is connected to `backend` (an IPv4 master is also
/// reached from IPv6 sockets as `::ffff:a.b.c.d`).
fn connected_to(found: &Found, backend: SocketAddr) -> bool {
    found.id.destination_port == backend.port()
        && addr16(found.id.destination_address) == addr16(backend.ip())
}

/// The dumped sockets to destroy: connected to `backend`, rewritten
/// (`conn` knows its cookie as such), and passing `filter`. `home_of`
/// names the master of a home index.
pub(crate) fn select(
    found: &[Found],
    backend: SocketAddr,
    filter: Filter,
    conn: impl Fn(u64) -> Option<ConnValue>,
    home_of: impl Fn(u16) -> Option<SocketAddr>,
) -> Vec<&Found> {
    found
        .iter()
        .filter(|f| connected_to(f, backend))
        .filter(|f| {
            let Some(c) = conn(f.cookie()) else {
                return false;
            };
            if c.flags & CONN_REWRITTEN == 0 {
                return false;
            }
            if filter.displaced_only && c.home == c.backend {
                return false;
            }
            match filter.home {
                Some(home) => home_of(c.home) == Some(home),
                None => true,
            }
        })
        .take(filter.max.unwrap_or(usize::MAX))
        .collect()
}

fn socket() -> Result<Socket, DestroyError> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(DestroyError::Socket)?;
    s.bind_auto().map_err(DestroyError::Socket)?;
    s.connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(DestroyError::Socket)?;
    Ok(s)
}

fn send<M>(s: &Socket, mut msg: NetlinkMessage<M>) -> io::Result<()>
where
    M: netlink_packet_core::NetlinkSerializable,
{
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0).map(drop)
}

/// Every TCP socket of `family` in this network namespace that has (or
/// asks for) a peer: not listening, not closed, not in TIME_WAIT.
pub(crate) fn dump(family: u8) -> Result<Vec<Found>, DestroyError> {
    let s = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let states = StateFlags::ESTABLISHED
        | StateFlags::SYN_SENT
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING;
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    });
    send(&s, NetlinkMessage::new(header, request.into())).map_err(DestroyError::Dump)?;

    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0).map_err(DestroyError::Dump)?;
        if n == 0 {
            return Err(DestroyError::Decode(
                "the dump ended without NLMSG_DONE".into(),
            ));
        }
        let mut at = 0;
        while at < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..n])
                .map_err(|e| DestroyError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(DestroyError::Dump(e.to_io()));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(Found {
                        family: r.header.family,
                        id: r.header.socket_id,
                    });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// `SOCK_DESTROY` one socket; `ENOENT` (it closed meanwhile) is `Ok(false)`.
fn destroy_one(s: &Socket, found: &Found) -> io::Result<bool> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
        family: found.family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: found.id.clone(),
    }));
    send(s, NetlinkMessage::new(header, request.into()))?;
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut &mut buf[..], 0)?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(true),
            Some(_) => {
                let err = e.to_io();
                if err.raw_os_error() == Some(libc::ENOENT) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        },
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SOCK_DESTROY answered without an acknowledgement",
        )),
    }
}

/// Destroys `chosen`; how many were closed (sockets already gone are not
/// counted).
pub(crate) fn destroy(chosen: &[&Found]) -> Result<usize, DestroyError> {
    if chosen.is_empty() {
        return Ok(0);
    }
    let s = socket()?;
    let mut closed = 0;
    for f in chosen {
        match destroy_one(&s, f) {
            Ok(true) => closed += 1,
            Ok(false) => {}
            Err(source) => {
                return Err(DestroyError::Destroy {
                    local: f.local(),
                    remote: f.remote(),
                    source,
                });
            }
        }
    }
    Ok(closed)
}

/// The families whose sockets can reach `backend`.
pub(crate) fn families(backend: SocketAddr) -> &'static [u8] {
    match backend.ip() {
        IpAddr::V4(_) => &[AF_INET, AF_INET6],
        IpAddr::V6(_) => &[AF_INET6],
    }
}

/// Whether `SOCK_DESTROY` works here: asked to destroy a socket that does
/// not exist, a kernel with CONFIG_INET_DIAG_DESTROY answers ENOENT, one
/// without it EOPNOTSUPP.
pub(crate) fn probe() -> io::Result<()> {
    let s = socket().map_err(|e| match e {
        DestroyError::Socket(io) => io,
        other => io::Error::other(other.to_string()),
    })?;
    let mut id = SocketId::new_v4();
    id.source_address = IpAddr::from([127, 0, 0, 1]);
    id.destination_address = IpAddr::from([127, 0, 0, 1]);
    id.source_port = 1;
    id.destination_port = 1;
    // INET_DIAG_NOCOOKIE: match by addresses only.
    id.cookie = [0xff; 8];
    destroy_one(
        &s,
        &Found {
            family: AF_INET,
            id,
        },
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(dst: &str, cookie_value: u64, family: u8) -> Found {
        let dst: SocketAddr = dst.parse().unwrap();
        let mut id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        id.destination_address = dst.ip();
        id.destination_port = dst.port();
        let lo = (cookie_value as u32).to_ne_bytes();
        let hi = ((cookie_value >> 32) as u32).to_ne_bytes();
        id.cookie = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        Found { family, id }
    }

    fn conn(backend: u16, home: u16, flags: u16) -> ConnValue {
        ConnValue {
            backend,
            home,
            flags,
            ..ConnValue::default()
        }
    }

    #[test]
    fn cookie_halves() {
        let f = found("127.0.0.1:1", 0x1122_3344_5566_7788, AF_INET);
        assert_eq!(f.cookie(), 0x1122_3344_5566_7788);
    }

    #[test]
    fn only_rewritten_sockets_to_that_master() {
        let master: SocketAddr = "127.0.0.2:6443".parse().unwrap();
        let socks = vec![
            found("127.0.0.2:6443", 1, AF_INET),           // rewritten: yes
            found("127.0.0.2:6443", 2, AF_INET),           // direct: not in the map
            found("127.0.0.3:6443", 3, AF_INET),           // another master
            found("127.0.0.2:6444", 4, AF_INET),           // another port
            found("[::ffff:127.0.0.2]:6443", 5, AF_INET6), // IPv6 socket, mapped
            found("127.0.0.2:6443", 6, AF_INET),           // proxied (not rewritten)
        ];
        let map = |c: u64| match c {
            1 | 3 | 4 | 5 => Some(conn(0, 0, CONN_REWRITTEN)),
            6 => Some(conn(0, 0, 0)),
            _ => None,
        };
        let picked: Vec<u64> = select(&socks, master, Filter::all(), map, |_| None)
            .iter()
            .map(|f| f.cookie())
            .collect();
        assert_eq!(picked, [1, 5]);
    }

    #[test]
    fn displaced_home_and_at_most() {
        let master: SocketAddr = "127.0.0.2:6443".parse().unwrap();
        let home_a: SocketAddr = "127.0.0.7:6443".parse().unwrap();
        let socks: Vec<Found> = (1..=6)
            .map(|c| found("127.0.0.2:6443", c, AF_INET))
            .collect();
        // Cookies 1-2 at home (index 0), 3-4 displaced from index 1, 5-6
        // displaced from index 2.
        let map = |c: u64| {
            let home = ((c - 1) / 2) as u16;
            Some(conn(0, home, CONN_REWRITTEN))
        };
        let home_of = |i: u16| match i {
            1 => Some(home_a),
            2 => Some("127.0.0.8:6443".parse().unwrap()),
            _ => Some(master),
        };
        let cookies = |f: Filter| -> Vec<u64> {
            select(&socks, master, f, map, home_of)
                .iter()
                .map(|f| f.cookie())
                .collect()
        };
        assert_eq!(cookies(Filter::displaced()), [3, 4, 5, 6]);
        assert_eq!(cookies(Filter::displaced().home(home_a)), [3, 4]);
        assert_eq!(cookies(Filter::displaced().at_most(3)), [3, 4, 5]);
        assert_eq!(cookies(Filter::all().at_most(1)), [1]);
    }

    #[test]
    fn families_reaching_a_master() {
        assert_eq!(
            families("127.0.0.1:1".parse().unwrap()),
            [AF_INET, AF_INET6]
        );
        assert_eq!(families("[::1]:1".parse().unwrap()), [AF_INET6]);
    }
}
