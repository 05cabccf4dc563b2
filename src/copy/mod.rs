//! The byte copy between client and upstream: both directions in one
//! future, half-close propagated, idle timeout across both sides.
//!
//! Each direction waits for readability *without* a buffer, takes one from
//! `pool` only when bytes are ready, and gives it back as soon as they are
//! written. A direction whose read fills a whole buffer is carrying bulk
//! data (a LIST, a log stream, an image): from then on it forwards with
//! splice(2) through a pipe lent the same way, and the bytes never enter
//! user space. Byte counters are atomic adds on pre-resolved handles.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;

mod connect;
mod idle;
mod pool;
mod replay;
mod sockopt;
mod splice;

use idle::Verdict;
use splice::Pipe;

use crate::clock::Clock;

pub(crate) use connect::{connect, upstream_socket};
pub(crate) use replay::{Answer, Replay};
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
    /// Bytes read and not yet written: in a lent buffer or a lent pipe,
    /// never both (each is drained before the next read).
    held: Held,
    /// Bulk seen: forward with splice from now on.
    splice: bool,
    eof: bool,
    done: bool,
    total: u64,
}

#[derive(Default)]
enum Held {
    #[default]
    Nothing,
    /// `buf[pos..end]` is still to be written; `end` <= `pool::BUF_SIZE`.
    Buf {
        buf: Box<pool::Buf>,
        pos: u32,
        end: u32,
    },
    Pipe(Pipe),
}

const _: () = assert!(pool::BUF_SIZE <= u32::MAX as usize);

impl Held {
    /// Bytes held, still to be written.
    fn len(&self) -> usize {
        match self {
            Held::Nothing => 0,
            Held::Buf { pos, end, .. } => (end - pos) as usize,
            Held::Pipe(pipe) => pipe.len(),
        }
    }

    /// One write of what is held to `to` (its readiness cleared on
    /// WouldBlock, like any tokio I/O); `Ok(n)` bytes left the buffer or
    /// the pipe.
    fn write_to(&mut self, to: &TcpStream) -> io::Result<usize> {
        match self {
            Held::Nothing => Ok(0),
            Held::Buf { buf, pos, end } => {
                let n = to.try_write(&buf[*pos as usize..*end as usize])?;
                // n <= end - pos: fits.
                *pos += n as u32;
                Ok(n)
            }
            Held::Pipe(pipe) => to.try_io(Interest::WRITABLE, || pipe.drain_to(to.as_fd())),
        }
    }

    /// Gives the buffer or pipe back (a pipe still holding bytes is closed
    /// by `give`, not reused).
    fn release(&mut self) {
        match std::mem::take(self) {
            Held::Nothing => {}
            Held::Buf { buf, .. } => pool::give(buf),
            Held::Pipe(pipe) => pipe.give(),
        }
    }
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
            while self.held.len() > 0 {
                ready!(to.poll_write_ready(cx))?;
                match self.held.write_to(to) {
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
            self.held.release();
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
                            self.held = Held::Pipe(pipe);
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
            match from.try_read(&mut buf[..]) {
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
                    // n <= BUF_SIZE
                    self.held = Held::Buf {
                        buf,
                        pos: 0,
                        end: n as u32,
                    };
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
        self.held.release();
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

/// The two sockets and the byte counters a copy works on, lent to each
/// poll: the copy's own state holds no references, so the connection's
/// future can own the sockets next to it (see `proxy`).
#[derive(Clone, Copy)]
pub(crate) struct Ends<'a> {
    pub client: &'a TcpStream,
    pub upstream: &'a TcpStream,
    pub to_upstream: &'a IntCounter,
    pub to_client: &'a IntCounter,
    /// Read only when a byte moved, or on a tick.
    pub clock: &'a Clock,
    /// TCP_USER_TIMEOUT for the upstream, set with its keepalive (only
    /// looked at on a tick).
    pub user_timeout: Option<Duration>,
}

/// Copies both ways until both sides have closed, an error, or idleness
/// (looked at when `poll` is told the wheel ticked for it), and gives `upstream`
/// keepalive after its first idle spell of `KEEPALIVE_AFTER`. A
/// hand-written state rather than an `async fn`: every open connection
/// holds it for its whole life.
pub(crate) struct Copy {
    up: Half,
    down: Half,
    idle: idle::Idle,
}

/// What the hedged first flight hands the copy.
#[derive(Default)]
pub(crate) struct Flight {
    /// The master's first bytes, first in line for the client.
    pub answer: Option<Answer>,
    /// The client's bytes the first flight already wrote to the master:
    /// counted in the copy's totals, as the copy would have.
    pub forwarded: u64,
}

impl Copy {
    /// Starts idle at `now_ms` (`Clock` ms), from where the first `flight`
    /// left the connection.
    pub(crate) fn new(idle_timeout: Duration, now_ms: u64, flight: Flight) -> Copy {
        let mut down = Half::default();
        if let Some(a) = flight.answer {
            // A read that filled the buffer was bulk, as in `Half::poll`.
            down.splice = a.len as usize == pool::BUF_SIZE;
            down.held = Held::Buf {
                buf: a.buf,
                pos: 0,
                end: a.len,
            };
        }
        let mut up = Half::default();
        up.total = flight.forwarded;
        Copy {
            up,
            down,
            idle: idle::Idle::new(idle_timeout, now_ms),
        }
    }

    /// When the copy next wants a tick (`Clock` ms): see `idle::Idle`.
    pub(crate) fn due_ms(&self) -> u64 {
        self.idle.due_ms()
    }

    /// Ready when the copy is over, with why and the bytes moved each way;
    /// the buffer and pipe it held are back in their pools by then. With
    /// `ticked`, a copy with nothing to move looks at how long it has been
    /// idle.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ends: Ends<'_>,
        ticked: bool,
    ) -> Poll<(io::Result<CopyEnd>, Totals)> {
        let result = ready!(self.poll_copy(cx, ends, ticked));
        self.up.held.release();
        self.down.held.release();
        let totals = Totals {
            to_upstream: self.up.total,
            to_client: self.down.total,
        };
        Poll::Ready((result, totals))
    }

    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        e: Ends<'_>,
        ticked: bool,
    ) -> Poll<io::Result<CopyEnd>> {
        let mut progressed = false;
        let a = self.up.poll(
            cx,
            e.client,
            e.upstream,
            e.to_upstream,
            &mut progressed,
            self.down.done,
        );
        let b = self.down.poll(
            cx,
            e.upstream,
            e.client,
            e.to_client,
            &mut progressed,
            self.up.done,
        );
        match (a, b) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                return Poll::Ready(Ok(CopyEnd::Closed));
            }
            _ => {}
        }
        if progressed {
            self.idle.touch(e.clock.now_ms());
        } else if ticked {
            // After the halves, not before: bytes that arrived with the
            // tick's wake-up count as activity, not as idleness.
            match self.idle.check(e.clock.now_ms()) {
                Verdict::Active => {}
                Verdict::ArmKeepalive => sockopt::dead_peer(e.upstream, e.user_timeout),
                Verdict::Expired => return Poll::Ready(Ok(CopyEnd::IdleTimeout)),
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socket2::SockRef;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Both directions counted on one counter.
    fn ends<'a>(
        client: &'a TcpStream,
        upstream: &'a TcpStream,
        counter: &'a IntCounter,
        clock: &'a Clock,
    ) -> Ends<'a> {
        Ends {
            client,
            upstream,
            to_upstream: counter,
            to_client: counter,
            clock,
            user_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// One poll of `copy`, as a tick's wake-up makes it (`ticked`) or not.
    async fn poll_once(
        copy: &mut Copy,
        ends: Ends<'_>,
        ticked: bool,
    ) -> Poll<(io::Result<CopyEnd>, Totals)> {
        std::future::poll_fn(|cx| Poll::Ready(copy.poll(cx, ends, ticked))).await
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Short connections never pay keepalive's four setsockopt calls; one
    /// that goes quiet gets keepalive on its upstream side, at the first
    /// tick after `KEEPALIVE_AFTER` of idleness.
    #[tokio::test(start_paused = true)]
    async fn the_upstream_gets_keepalive_once_the_connection_goes_quiet() {
        let (_client, client_near) = pair().await;
        let (upstream_near, _upstream) = pair().await;
        let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
        let ends = ends(&client_near, &upstream_near, &counter, &clock);
        let mut copy = Copy::new(Duration::from_secs(3600), clock.now_ms(), Flight::default());
        let upstream = SockRef::from(&upstream_near);
        tokio::time::advance(sockopt::KEEPALIVE_AFTER - Duration::from_millis(1)).await;
        assert!(poll_once(&mut copy, ends, true).await.is_pending());
        assert!(!upstream.keepalive().unwrap(), "keepalive set too early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll_once(&mut copy, ends, false).await.is_pending());
        assert!(!upstream.keepalive().unwrap(), "set without a tick");
        assert!(poll_once(&mut copy, ends, true).await.is_pending());
        assert_eq!(
            upstream.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
        sockopt::assert_keepalive(upstream);
    }

    /// Idleness is looked at on a tick, and counts from the last byte
    /// moved either way.
    #[tokio::test(start_paused = true)]
    async fn a_tick_closes_a_copy_idle_for_its_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, client_near) = pair().await;
        let (upstream_near, mut upstream) = pair().await;
        let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
        let ends = ends(&client_near, &upstream_near, &counter, &clock);
        let mut copy = Copy::new(Duration::from_secs(10), clock.now_ms(), Flight::default());
        tokio::time::advance(Duration::from_secs(7)).await;
        client.write_all(b"x").await.unwrap();
        // Polled until the byte has gone through: that is activity at 7 s.
        let mut got = [0u8; 1];
        let read = upstream.read_exact(&mut got);
        tokio::pin!(read);
        loop {
            assert!(poll_once(&mut copy, ends, true).await.is_pending());
            tokio::select! {
                biased;
                r = &mut read => { r.unwrap(); break; }
                _ = tokio::task::yield_now() => {}
            }
        }
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(
            poll_once(&mut copy, ends, true).await.is_pending(),
            "closed early"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            poll_once(&mut copy, ends, false).await.is_pending(),
            "closed without a tick"
        );
        match poll_once(&mut copy, ends, true).await {
            Poll::Ready((Ok(CopyEnd::IdleTimeout), totals)) => assert_eq!(totals.to_upstream, 1),
            Poll::Ready((r, _)) => panic!("ended with {r:?}"),
            Poll::Pending => panic!("still open after the timeout"),
        }
    }

    /// What a direction borrowed goes back to its pool once its bytes are
    /// written: the first 32 KiB read's buffer, then the pipes of the
    /// spliced rest. (Dropped instead, they would cost an allocation, or a
    /// pipe2 and fcntl, on the next read.)
    #[tokio::test]
    async fn buffers_and_pipes_go_back_to_their_pools() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, client_near) = pair().await;
        let (upstream_near, mut upstream) = pair().await;
        let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
        let ends = ends(&client_near, &upstream_near, &counter, &clock);
        let mut state = Copy::new(Duration::from_secs(3600), clock.now_ms(), Flight::default());
        let mut copy = std::future::poll_fn(|cx| state.poll(cx, ends, false));
        let (buffers, pipes) = (pool::free_len(), Pipe::free_len());
        let data = vec![7u8; 1 << 20];
        let mut got = vec![0u8; data.len()];
        let transfer = async {
            tokio::join!(async { client.write_all(&data).await.unwrap() }, async {
                upstream.read_exact(&mut got).await.unwrap()
            })
        };
        tokio::select! {
            r = &mut copy => panic!("copy ended: {:?}", r.0),
            _ = transfer => {}
        }
        assert!(got == data, "bytes changed on the way");
        println!(
            "free buffers {buffers} -> {}, free pipes {pipes} -> {}",
            pool::free_len(),
            Pipe::free_len()
        );
        assert_eq!(
            pool::free_len(),
            buffers + 1,
            "the buffer was not given back"
        );
        assert!(Pipe::free_len() > pipes, "no pipe was given back");
    }

    /// The totals a copy reports (the `connection closed` log line's byte
    /// counts) are the bytes it moved each way, buffered and spliced.
    #[tokio::test]
    async fn totals_count_the_bytes_moved_each_way() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, client_near) = pair().await;
        let (upstream_near, mut upstream) = pair().await;
        // The sockets close when the copy ends, as the connection's do: the
        // last FIN is the close's.
        let copy = async move {
            let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
            let ends = ends(&client_near, &upstream_near, &counter, &clock);
            let mut state = Copy::new(Duration::from_secs(3600), clock.now_ms(), Flight::default());
            std::future::poll_fn(|cx| state.poll(cx, ends, false)).await
        };
        // Up: more than a buffer, so the rest is spliced. Down: a few bytes.
        let (up, down) = (vec![1u8; 300_000], vec![2u8; 1_000]);
        let peers = async {
            let mut got = vec![];
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            upstream.read_to_end(&mut got).await.unwrap();
            assert!(got == up, "bytes changed on the way up");
            upstream.write_all(&down).await.unwrap();
            upstream.shutdown().await.unwrap();
            got.clear();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got == down, "bytes changed on the way down");
        };
        let ((result, totals), ()) = tokio::join!(copy, peers);
        assert_eq!(result.unwrap(), CopyEnd::Closed);
        assert_eq!((totals.to_upstream, totals.to_client), (300_000, 1_000));
    }

    /// A client's FIN reaches the upstream on the poll that read it, with
    /// nothing else to wake the copy (a few bytes, no buffer ever full),
    /// while the other way stays open for the reply.
    #[tokio::test]
    async fn a_half_close_passes_at_once_and_the_reply_still_comes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, client_near) = pair().await;
        let (upstream_near, mut upstream) = pair().await;
        // A task of its own, polled only when its sockets wake it.
        let copy = tokio::spawn(async move {
            let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
            let ends = ends(&client_near, &upstream_near, &counter, &clock);
            let mut state = Copy::new(Duration::from_secs(3600), clock.now_ms(), Flight::default());
            std::future::poll_fn(|cx| state.poll(cx, ends, false)).await
        });
        // Every wait has a deadline: under a broken half-close this test
        // fails, it does not hang.
        let within = Duration::from_secs(10);
        let peers = async {
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = vec![];
            let eof = tokio::time::timeout(within, upstream.read_to_end(&mut got));
            eof.await
                .expect("the FIN did not reach the upstream")
                .unwrap();
            assert_eq!(got, b"ping");
            upstream.write_all(b"pong").await.unwrap();
            upstream.shutdown().await.unwrap();
            got.clear();
            let reply = tokio::time::timeout(within, client.read_to_end(&mut got));
            reply
                .await
                .expect("the reply and its FIN did not reach the client")
                .unwrap();
            assert_eq!(got, b"pong");
        };
        peers.await;
        let (result, _) = tokio::time::timeout(within, copy)
            .await
            .expect("the copy did not end once both sides closed")
            .unwrap();
        assert_eq!(result.unwrap(), CopyEnd::Closed);
    }

    /// A write to a peer that reset ends the copy with that error (and
    /// does not spin on it as if it were EAGAIN).
    #[tokio::test]
    async fn a_write_to_a_reset_peer_ends_the_copy_with_an_error() {
        use tokio::io::AsyncWriteExt;
        let (mut client, client_near) = pair().await;
        let (upstream_near, upstream) = pair().await;
        SockRef::from(&upstream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(upstream);
        client.write_all(b"for a peer that is gone").await.unwrap();
        // Both are in before the copy's first poll, so it reads the client
        // first and writes to the reset socket.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while upstream_near.peer_addr().is_ok()
            || client_near.peek(&mut [0u8; 1]).await.unwrap() == 0
        {
            assert!(tokio::time::Instant::now() < deadline, "no reset seen");
            tokio::task::yield_now().await;
        }
        // A copy that took the error for EAGAIN spins inside one poll and
        // never yields, so no timer of this thread could end the test: it
        // runs on a thread of its own (this thread's runtime still drives
        // the sockets), and this one waits for its result with a deadline.
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let (counter, clock) = (IntCounter::new("c", "c").unwrap(), Clock::new());
            let ends = ends(&client_near, &upstream_near, &counter, &clock);
            let mut state = Copy::new(Duration::from_secs(3600), clock.now_ms(), Flight::default());
            let copy = std::future::poll_fn(|cx| state.poll(cx, ends, false));
            let _ = tx.send(runtime.block_on(copy).0.map_err(|e| e.to_string()));
        });
        let result = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the copy neither ended nor yielded within 10 s: it spins on the error")
            .unwrap();
        let e = result.expect_err("the copy ended without an error");
        println!("copy ended with: {e}");
    }
}
