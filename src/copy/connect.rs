//! The upstream connect, in as few syscalls as the kernel allows: socket,
//! TCP_NODELAY, connect, and the epoll registration; no SO_ERROR read when
//! the connect succeeded.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A non-blocking, close-on-exec TCP socket for `addr` with TCP_NODELAY,
/// ready to connect. An error here is ours (out of descriptors or memory),
/// not the upstream's.
pub(crate) fn upstream_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // Set before connect, so it holds from the first byte; see `sockopt`.
    let _ = s.set_tcp_nodelay(true);
    Ok(s)
}

/// Connects `socket` to `addr`, like tokio's `TcpSocket::connect`, minus
/// its `getsockopt(SO_ERROR)` after every connect: a socket still
/// connecting is not writable, and a failed one reports HUP or ERR with
/// its writability, so the error is read only when one of those came.
pub(crate) async fn connect(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    if let Err(e) = socket.connect(&addr.into())
        && e.raw_os_error() != Some(libc::EINPROGRESS)
    {
        return Err(e);
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_with_nodelay_and_without_keepalive() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(upstream_socket(addr).unwrap(), addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        let r = socket2::SockRef::from(&s);
        assert!(r.tcp_nodelay().unwrap());
        assert!(
            !r.keepalive().unwrap(),
            "keepalive waits for KEEPALIVE_AFTER"
        );
    }

    /// The error of a failed connect is the kernel's, as with tokio's own.
    #[tokio::test]
    async fn a_refused_connect_says_refused() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is closed: nothing listens there now.
        let e = connect(upstream_socket(addr).unwrap(), addr)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
}
