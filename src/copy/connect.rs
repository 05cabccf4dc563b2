//! The upstream connect, in as few syscalls as the kernel allows: socket,
//! TCP_NODELAY, connect, and the epoll registration; no SO_ERROR read when
//! the connect succeeded. Its timeout is part of the same future.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

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

pin_project_lite::pin_project! {
    /// Connects a socket, like tokio's `TcpSocket::connect` under
    /// `timeout_at`, minus its `getsockopt(SO_ERROR)` after every connect: a
    /// socket still connecting is not writable, and a failed one reports HUP
    /// or ERR with its writability, so the error is read only when one of
    /// those came. Hand-written, because every connection holds it (or the
    /// copy, whichever is larger) for its whole life.
    pub(crate) struct Connect {
        // Taken when the connect ends; `Err` if it failed right away.
        stream: Option<io::Result<TcpStream>>,
        #[pin]
        sleep: Sleep,
    }
}

/// Starts connecting `socket` to `addr`; the future ends when the connect
/// succeeded, failed, or `deadline` passed (`TimedOut`).
pub(crate) fn connect(socket: Socket, addr: SocketAddr, deadline: Instant) -> Connect {
    let stream = match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => TcpStream::from_std(socket.into()),
    };
    Connect {
        stream: Some(stream),
        sleep: tokio::time::sleep_until(deadline),
    }
}

impl Future for Connect {
    type Output = io::Result<TcpStream>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let p = self.project();
        let polled = match p.stream {
            Some(Ok(s)) => s.poll_write_ready(cx),
            Some(Err(_)) => Poll::Ready(Ok(())),
            None => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        };
        match polled {
            Poll::Ready(Ok(())) => match p.stream.take() {
                Some(Ok(s)) if failed(&s, cx) => Poll::Ready(Err(s
                    .take_error()?
                    .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()))),
                Some(r) => Poll::Ready(r),
                None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match p.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Did the connect of `s`, now writable or closed, fail? From the readiness
/// tokio recorded, without a syscall; `poll_write_ready` has just seen it
/// set, so the `ready` future answers on its first poll (if it ever did
/// not, the kernel is asked).
fn failed(s: &TcpStream, cx: &mut Context<'_>) -> bool {
    let ready = std::pin::pin!(s.ready(Interest::WRITABLE | Interest::ERROR));
    match ready.poll(cx) {
        Poll::Ready(Ok(r)) => r.is_write_closed() || r.is_error(),
        Poll::Ready(Err(_)) => true,
        Poll::Pending => !matches!(s.take_error(), Ok(None)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn connects_with_nodelay_and_without_keepalive() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(upstream_socket(addr).unwrap(), addr, far())
            .await
            .unwrap();
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
        let e = connect(upstream_socket(addr).unwrap(), addr, far())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    /// A connect that hangs (a full listen backlog, like a blackholed master)
    /// ends at the deadline as a timeout.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_connect_times_out_at_the_deadline() {
        // Backlog 0 and one queued client: the next SYN is dropped.
        let l = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let e = connect(
            upstream_socket(addr).unwrap(),
            addr,
            start + Duration::from_secs(3),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
