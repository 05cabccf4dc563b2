//! Socket options for both sides of a proxied connection: TCP_NODELAY (API
//! requests are small and latency-bound) and keepalive, so dead peers (a
//! master that lost power, a NAT that forgot us) are found within about a
//! minute and a half instead of hours; and on the upstream side
//! TCP_USER_TIMEOUT (`tcp_user_timeout`), because keepalive cannot fire
//! while sent data is unacknowledged: a master that vanishes with a
//! request in flight would otherwise hold the client for the kernel's
//! 15 minutes of retransmissions. Failures are ignored: a connection still
//! works without them.
//!
//! Each call is a syscall on every new connection, so they are placed where
//! they cost least:
//! - Client side: set once on the listening socket. Linux clones a
//!   listener's socket into each accepted one, options included, which
//!   saves five setsockopt calls per client connection.
//! - Upstream side: TCP_NODELAY on the new socket, before connect (see
//!   `connect`). Keepalive
//!   (four calls) only once the connection has been idle for
//!   `KEEPALIVE_AFTER` (see `copy::idle`): most connections (one kubectl
//!   request, a health probe) are over long before a keepalive probe could
//!   be sent, a busy one needs none while bytes flow, and for the rest a
//!   dead master is found at most that much (plus a tick) later. The user
//!   timeout comes with it (a fifth call): a stalled connection moves no
//!   byte, so it is idle by then, and the kernel measures the timeout from
//!   the first unanswered retransmission, not from when it was set.

use std::time::Duration;

use socket2::{SockRef, Socket, TcpKeepalive};

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long an upstream connection stays idle before it gets keepalive.
/// Small next to `KEEPALIVE_IDLE`, so the delay barely moves when a dead
/// peer is found.
pub(super) const KEEPALIVE_AFTER: Duration = Duration::from_secs(5);

/// Sets the options on a listening socket (inherited by accepted sockets).
pub(crate) fn tune_listener(socket: &Socket) {
    let _ = socket.set_tcp_nodelay(true);
    keepalive(socket);
}

/// Keepalive with our timings.
pub(super) fn keepalive<'a>(socket: impl Into<SockRef<'a>>) {
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket.into().set_tcp_keepalive(&ka);
}

/// Keepalive, and TCP_USER_TIMEOUT when `user_timeout` is given: for an
/// upstream socket that went quiet.
pub(super) fn dead_peer(socket: &tokio::net::TcpStream, user_timeout: Option<Duration>) {
    keepalive(socket);
    if user_timeout.is_some() {
        let _ = SockRef::from(socket).set_tcp_user_timeout(user_timeout);
    }
}

/// Has `socket` our keepalive settings?
#[cfg(test)]
pub(super) fn assert_keepalive(s: SockRef<'_>) {
    assert!(s.keepalive().unwrap(), "keepalive is off");
    assert_eq!(s.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(s.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use socket2::{Domain, Type};

    use super::*;

    /// The saving above rests on this kernel behaviour; if it ever changes,
    /// this fails and clients lose NODELAY/keepalive.
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(8).unwrap();
        tune_listener(&l);
        let l = std::net::TcpListener::from(l);
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let s = SockRef::from(&a);
        assert!(s.tcp_nodelay().unwrap());
        assert_keepalive(s);
    }
}
