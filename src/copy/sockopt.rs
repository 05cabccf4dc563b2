//! Socket options for both sides of a proxied connection: TCP_NODELAY (API
//! requests are small and latency-bound) and keepalive, so dead peers (a
//! master that lost power, a NAT that forgot us) are found within about a
//! minute and a half instead of hours. Failures are ignored: a connection
//! still works without them.
//!
//! Client side: set once on the listening socket. Linux clones a listener's
//! socket into each accepted one, options included, which saves five
//! setsockopt calls per client connection. Upstream side: set per socket.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Sets the options on a listening socket (inherited by accepted sockets)
/// or on a connected upstream socket.
pub(crate) fn tune<'a>(socket: impl Into<SockRef<'a>>) {
    let s: SockRef<'a> = socket.into();
    let _ = s.set_tcp_nodelay(true);
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = s.set_tcp_keepalive(&ka);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The saving above rests on this kernel behaviour; if it ever changes,
    /// this fails and clients lose NODELAY/keepalive.
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tune(&l);
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let s = SockRef::from(&a);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
