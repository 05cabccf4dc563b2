//! The byte copy between client and upstream: both directions in one
//! future, half-close propagated, idle timeout across both sides.
//!
//! Each direction waits for readability *without* a buffer, takes one from
//! `pool` only when bytes are ready, and gives it back as soon as they are
//! written. A direction whose read fills a whole buffer is carrying bulk
//! data (a LIST, a log stream, an image): from then on it forwards with
//! splice(2) through a pipe lent the same way, and the bytes never enter
//! user space. Byte counters are atomic adds on pre-resolved handles.

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

mod pool;
mod sockopt;
mod splice;

use splice::Pipe;

/// TCP_NODELAY and keepalive, for the listener (inherited by accepted
/// client sockets) and each upstream socket; see `sockopt`.
pub(crate) use sockopt::tune as tune_socket;

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
    pos: usize,
    end: usize,
    /// Bulk seen: forward with splice from now on.
    splice: bool,
    pipe: Option<Pipe>,
    eof: bool,
    done: bool,
    total: u64,
}

impl Half {
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
                    match to.try_write(&buf[self.pos..self.end]) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.pos += n;
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
                    self.end = n;
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

/// Copies both ways until both sides have closed, an error, or idleness.
pub(crate) async fn bidirectional(
    client: &TcpStream,
    upstream: &TcpStream,
    idle_timeout: Duration,
    to_upstream: &IntCounter,
    to_client: &IntCounter,
) -> (io::Result<CopyEnd>, Totals) {
    let mut up = Half::default();
    let mut down = Half::default();
    let mut last = Instant::now();
    // Re-armed lazily: activity only moves `last`, the timer is reset when it
    // fires early, so a busy connection does not touch the timer wheel per read.
    let sleep = tokio::time::sleep(idle_timeout);
    tokio::pin!(sleep);
    let result = poll_fn(|cx| {
        let mut progressed = false;
        let a = up.poll(
            cx,
            client,
            upstream,
            to_upstream,
            &mut progressed,
            down.done,
        );
        let b = down.poll(cx, upstream, client, to_client, &mut progressed, up.done);
        match (a, b) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Ok(CopyEnd::Closed)),
            _ => {}
        }
        if progressed {
            last = Instant::now();
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            let deadline = crate::clock::deadline(last, idle_timeout);
            if Instant::now() >= deadline {
                return Poll::Ready(Ok(CopyEnd::IdleTimeout));
            }
            sleep.as_mut().reset(deadline);
        }
    })
    .await;
    for half in [&mut up, &mut down] {
        if let Some(buf) = half.buf.take() {
            pool::give(buf);
        }
        // A pipe still holding bytes is closed by `give`, not reused.
        if let Some(pipe) = half.pipe.take() {
            pipe.give();
        }
    }
    let totals = Totals {
        to_upstream: up.total,
        to_client: down.total,
    };
    (result, totals)
}
