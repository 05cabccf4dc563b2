//! The uid and inode of a local client's socket, from the kernel:
//! one `sock_diag` (inet_diag) request for exactly that socket, by its
//! addresses. On loopback the client's socket has the accepted peer's
//! address as its source and cplb's listening address as its destination.
//! Unprivileged: inet_diag answers any user for a lookup.
//!
//! Blocking (one round trip, tens of microseconds): the resolver thread
//! calls it, never a connection's task.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

/// The owner and inode of a client's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub inode: u32,
}

pub(crate) struct Diag {
    socket: Socket,
    buf: Vec<u8>,
}

impl Diag {
    pub(crate) fn open() -> io::Result<Diag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Diag {
            socket,
            buf: vec![0; 8192],
        })
    }

    /// The socket connected from `client` to `server` on this host;
    /// `Ok(None)` when there is none here (a remote client, or it closed).
    pub(crate) fn owner(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<Option<Owner>> {
        let family = if client.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut id = if client.is_ipv4() {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        id.source_address = client.ip();
        id.source_port = client.port();
        id.destination_address = server.ip();
        id.destination_port = server.port();
        // INET_DIAG_NOCOOKIE: match by addresses only.
        id.cookie = [0xff; 8];
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: id,
        });
        let mut msg = NetlinkMessage::new(header, request.into());
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Ok(Some(Owner {
                uid: r.header.uid,
                inode: r.header.inode,
            })),
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(None),
                Some(_) => {
                    let err = e.to_io();
                    if err.raw_os_error() == Some(libc::ENOENT) {
                        Ok(None)
                    } else {
                        Err(err)
                    }
                }
            },
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket this process opened is found, owned by this uid.
    #[test]
    fn finds_its_own_client_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let mut d = Diag::open().unwrap();
        let o = d
            .owner(peer, l.local_addr().unwrap())
            .unwrap()
            .expect("found");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(o.uid, unsafe { libc::geteuid() });
        assert!(o.inode > 0);
        drop(c);
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(d.owner(gone, l.local_addr().unwrap()).unwrap(), None);
    }
}
