//! The byte copy between client and upstream: both directions in one
//! future, half-close propagated, idle timeout across both sides.
//!
//! Each direction waits for readability *without* a buffer, takes one from
//! `pool` only when bytes are ready, and gives it back as soon as they are
//! written. A direction whose read fills a whole buffer is carrying bulk
//! data (a LIST, a log stream, an image): from then on it forwards with
//! splice(2) through a pipe lent the same way, and the bytes never enter
//! user space. Byte counters are atomic adds on pre-resolved handles.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

mod connect;
mod pool;
mod sockopt;
mod splice;

use splice::Pipe;

pub(crate) use connect::{connect, upstream_socket};
/// TCP_NODELAY and keepalive for the listener, inherited by accepted client
/// sockets; see `sockopt`.
pub(crate) use sockopt::tune_listener;

/// Why a copy ended, when it ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// Both sides finished their writes and reads.
    Closed,
    /// Neither side moved a byte for `idle_timeout`.
    IdleTimeout,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// One direction of the copy.
#[derive(Default)]
struct Half {
    buf: Option<Box<[u8]>>,
    // Within `buf`, at most `pool::BUF_SIZE`.
    pos: u32,
    end: u32,
    /// Bulk seen: forward with splice from now on.
    splice: bool,
    pipe: Option<Pipe>,
    eof: bool,
    done: bool,
    total: u64,
}

const _: () = assert!(pool::BUF_SIZE <= u32::MAX as usize);

impl Half {
    /// Gives the buffer and pipe back, if any (a pipe still holding bytes
    /// is closed by `give`, not reused).
    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        if let Some(pipe) = self.pipe.take() {
            pipe.give();
        }
    }

    /// Moves bytes until it would block; Ready(Ok) once EOF was read and the
    /// write side shut down (the half-close reaches the peer).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        counter: &IntCounter,
        progressed: &mut bool,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(buf) = &self.buf {
                while self.pos < self.end {
                    ready!(to.poll_write_ready(cx))?;
                    match to.try_write(&buf[self.pos as usize..self.end as usize]) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            // n <= end - pos: fits.
                            self.pos += n as u32;
                            self.total += n as u64;
                            counter.inc_by(n as u64);
                            *progressed = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if let Some(buf) = self.buf.take() {
                    pool::give(buf);
                }
            }
            if let Some(pipe) = &mut self.pipe {
                while pipe.len() > 0 {
                    ready!(to.poll_write_ready(cx))?;
                    match to.try_io(Interest::WRITABLE, || pipe.drain_to(to.as_fd())) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.total += n as u64;
                            counter.inc_by(n as u64);
                            *progressed = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if let Some(pipe) = self.pipe.take() {
                    pipe.give();
                }
            }
            if self.eof {
                // Half-close: pass the EOF on. When the other direction has
                // already finished, both sockets close right away, and
                // close() sends that FIN without this extra syscall. (The
                // peer may be gone; the other direction reports that.)
                if !self.done && !other_done {
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            ready!(from.poll_read_ready(cx))?;
            if self.splice {
                // Out of descriptors for a pipe: this read goes buffered.
                if let Some(mut pipe) = Pipe::take() {
                    match from.try_io(Interest::READABLE, || pipe.fill_from(from.as_fd())) {
                        Ok(0) => {
                            pipe.give();
                            self.eof = true;
                        }
                        Ok(_) => {
                            self.pipe = Some(pipe);
                            *progressed = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give(),
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            // This socket type cannot splice: copy instead.
                            pipe.give();
                            self.splice = false;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    continue;
                }
            }
            let mut buf = pool::take();
            match from.try_read(&mut buf) {
                Ok(0) => {
                    pool::give(buf);
                    self.eof = true;
                }
                Ok(n) => {
                    if n < buf.len() {
                        clear_read_readiness(from);
                    } else {
                        self.splice = true;
                    }
                    self.buf = Some(buf);
                    self.pos = 0;
                    self.end = n as u32; // n <= BUF_SIZE
                    *progressed = true;
                }
                Err(e) => {
                    pool::give(buf);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

/// A copy dropped midway (the upstream was evicted, shutdown forced the
/// close) still returns what it borrowed.
impl Drop for Half {
    fn drop(&mut self) {
        self.release();
    }
}

/// A short read drained the socket, so the next `recv` would only say
/// EAGAIN: skip that syscall (as nginx does) by clearing tokio's read
/// readiness now. Safe on the worker's single-threaded runtime: the reactor
/// cannot record new readiness while this task runs, and data arriving
/// after the read raises a fresh epoll edge. tokio never clears the
/// read-closed state, so a FIN that came with the data is not lost.
fn clear_read_readiness(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

pin_project_lite::pin_project! {
    /// Copies both ways until both sides have closed, an error, or
    /// idleness, and gives `upstream` keepalive once the copy has run
    /// `KEEPALIVE_AFTER`. A hand-written future rather than an `async fn`:
    /// every open connection holds this state, and an `async fn` (with the
    /// closure of its `poll_fn`) would hold its arguments two or three times.
    #[project = Proj]
    pub(crate) struct Bidirectional<'a> {
        client: &'a TcpStream,
        upstream: &'a TcpStream,
        to_upstream: &'a IntCounter,
        to_client: &'a IntCounter,
        idle_timeout: Duration,
        up: Half,
        down: Half,
        // When a byte last moved.
        last: Instant,
        keepalive: bool,
        // Re-armed lazily: activity only moves `last`, the timer is reset
        // when it fires early, so a busy connection does not touch the timer
        // wheel per read. Its first firing also arms the upstream's
        // keepalive (see `sockopt`).
        #[pin]
        sleep: Sleep,
    }
}

pub(crate) fn bidirectional<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    idle_timeout: Duration,
    to_upstream: &'a IntCounter,
    to_client: &'a IntCounter,
) -> Bidirectional<'a> {
    Bidirectional {
        client,
        upstream,
        to_upstream,
        to_client,
        idle_timeout,
        up: Half::default(),
        down: Half::default(),
        last: Instant::now(),
        keepalive: false,
        sleep: tokio::time::sleep(idle_timeout.min(sockopt::KEEPALIVE_AFTER)),
    }
}

impl Future for Bidirectional<'_> {
    type Output = (io::Result<CopyEnd>, Totals);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut p = self.project();
        let result = ready!(poll_copy(&mut p, cx));
        p.up.release();
        p.down.release();
        let totals = Totals {
            to_upstream: p.up.total,
            to_client: p.down.total,
        };
        Poll::Ready((result, totals))
    }
}

fn poll_copy(p: &mut Proj<'_, '_>, cx: &mut Context<'_>) -> Poll<io::Result<CopyEnd>> {
    let mut progressed = false;
    let a = p.up.poll(
        cx,
        p.client,
        p.upstream,
        p.to_upstream,
        &mut progressed,
        p.down.done,
    );
    let b = p.down.poll(
        cx,
        p.upstream,
        p.client,
        p.to_client,
        &mut progressed,
        p.up.done,
    );
    match (a, b) {
        (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
        (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Ok(CopyEnd::Closed)),
        _ => {}
    }
    if progressed {
        *p.last = Instant::now();
    }
    loop {
        ready!(p.sleep.as_mut().poll(cx));
        if !*p.keepalive {
            *p.keepalive = true;
            sockopt::keepalive(*p.upstream);
        }
        let deadline = crate::clock::deadline(*p.last, *p.idle_timeout);
        if Instant::now() >= deadline {
            return Poll::Ready(Ok(CopyEnd::IdleTimeout));
        }
        p.sleep.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socket2::SockRef;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Short connections never pay keepalive's four setsockopt calls; one
    /// that lives on gets keepalive on its upstream side.
    #[tokio::test(start_paused = true)]
    async fn the_upstream_gets_keepalive_once_the_connection_lives_on() {
        let (_client, client_near) = pair().await;
        let (upstream_near, _upstream) = pair().await;
        let counter = IntCounter::new("c", "c").unwrap();
        let copy = bidirectional(
            &client_near,
            &upstream_near,
            Duration::from_secs(3600),
            &counter,
            &counter,
        );
        tokio::pin!(copy);
        let upstream = SockRef::from(&upstream_near);
        let almost = sockopt::KEEPALIVE_AFTER - Duration::from_millis(1);
        tokio::select! {
            r = &mut copy => panic!("copy ended: {:?}", r.0),
            _ = tokio::time::sleep(almost) => {}
        }
        assert!(!upstream.keepalive().unwrap(), "keepalive set too early");
        tokio::select! {
            r = &mut copy => panic!("copy ended: {:?}", r.0),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
        sockopt::assert_keepalive(upstream);
    }
}
