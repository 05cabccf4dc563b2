//! The smallest io_uring TCP proxy that does what cplb's data plane does on
//! the hot path: accept, connect to one upstream, copy both ways through a
//! 32 KiB buffer per direction (cplb's buffer size), pass half-closes on,
//! close. No health, no hashing, no timeouts, no limits.
//!
//! It exists to answer one question of issue 13 with a measurement instead
//! of a guess: how much faster can a completion-based data plane (every
//! ready operation of a worker submitted in one `io_uring_enter`) move
//! keep-alive requests and new connections than cplb's readiness-based one,
//! on this kernel, side by side with nginx and HAProxy in `bench/e2e`?
//! If this upper bound does not win, a full io_uring data plane in cplb
//! (with the seccomp fallback) would not either.
//!
//!     uring-proto LISTEN_ADDR UPSTREAM_ADDR [THREADS]
//!
//! Two ways to receive, chosen by `URING_PROTO_RECV`:
//! - `multishot` (the default): one multishot receive per direction, armed
//!   once, takes buffers from a ring of provided buffers (2,048 of 16 KiB
//!   per thread), so a request costs two submissions (the sends), not four;
//! - `single`: a receive into the direction's own 32 KiB buffer (cplb's
//!   size), submitted again after each send.
//!
//! One thread per core (cplb's `workers: 0`), each with its own
//! SO_REUSEPORT listener and ring (SINGLE_ISSUER, DEFER_TASKRUN,
//! COOP_TASKRUN) and a multishot accept.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const BUF: usize = 32 * 1024;
const ENTRIES: u32 = 4096;
/// Provided buffers (multishot mode), per thread.
const NBUF: u16 = 2048;
const BSZ: usize = 16 * 1024;
const BGID: u16 = 0;

/// What a completion is for: the low byte of `user_data`; the connection's
/// slot is the rest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Accept = 0,
    Connect = 1,
    /// Direction 0 is client → upstream, 1 is upstream → client.
    Recv0 = 2,
    Recv1 = 3,
    Send0 = 4,
    Send1 = 5,
    Shut0 = 6,
    Shut1 = 7,
    Close = 8,
    RecvM0 = 9,
    RecvM1 = 10,
}

impl Op {
    fn from(b: u8) -> Op {
        match b {
            0 => Op::Accept,
            1 => Op::Connect,
            2 => Op::Recv0,
            3 => Op::Recv1,
            4 => Op::Send0,
            5 => Op::Send1,
            6 => Op::Shut0,
            7 => Op::Shut1,
            8 => Op::Close,
            9 => Op::RecvM0,
            _ => Op::RecvM1,
        }
    }

    /// The direction-`d` one of a pair (`Recv0`/`Recv1`, ...).
    fn of(base: Op, d: usize) -> Op {
        Op::from(base as u8 + d as u8)
    }

    /// The direction of a paired operation whose first is `base`.
    fn dir(self, base: Op) -> usize {
        (self as u8 - base as u8) as usize
    }
}

fn ud(slot: usize, op: Op) -> u64 {
    ((slot as u64) << 8) | op as u64
}

struct Dir {
    /// Single-shot mode only: what the direction receives into.
    buf: Option<Box<[u8; BUF]>>,
    /// Bytes in `buf[pos..end]` still to send.
    pos: usize,
    end: usize,
    done: bool,
    // Multishot mode: received buffers (id, length) waiting to be sent, the
    // one being sent at `pos`, whether the multishot receive is armed, and
    // EOF seen.
    queue: VecDeque<(u16, u32)>,
    sending: bool,
    armed: bool,
    eof: bool,
}

/// Provided buffers: `NBUF` buffers of `BSZ` bytes and the ring through
/// which they are handed to the kernel.
struct Bufs {
    mem: Box<[u8]>,
    ring: *mut types::BufRingEntry,
    tail: u16,
}

impl Bufs {
    fn new(ring: &IoUring) -> io::Result<Bufs> {
        let layout = std::alloc::Layout::from_size_align(NBUF as usize * 16, 4096).unwrap();
        // SAFETY: a non-zero size; zeroed is a valid (empty) ring.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        assert!(!ptr.is_null());
        // SAFETY: the ring memory is never freed (the process ends with it).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, NBUF, BGID, 0)?
        };
        let mut b = Bufs {
            mem: vec![0u8; NBUF as usize * BSZ].into_boxed_slice(),
            ring: ptr,
            tail: 0,
        };
        for bid in 0..NBUF {
            b.give(bid);
        }
        Ok(b)
    }

    fn addr(&self, bid: u16) -> *const u8 {
        self.mem[bid as usize * BSZ..].as_ptr()
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give(&mut self, bid: u16) {
        // SAFETY: `tail & (NBUF - 1)` is within the ring; the tail word is
        // an atomic u16 that the kernel reads.
        unsafe {
            let e = &mut *self.ring.add((self.tail & (NBUF - 1)) as usize);
            e.set_addr(self.addr(bid) as u64);
            e.set_len(BSZ as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

struct Conn {
    client: RawFd,
    upstream: RawFd,
    dirs: [Dir; 2],
    /// Operations submitted and not yet completed: the slot (and the
    /// buffers the kernel may be writing) is freed only at zero.
    inflight: u32,
    failed: bool,
    closing: bool,
}

impl Conn {
    /// The descriptors direction `d` reads from and writes to.
    fn ends(&self, d: usize) -> (RawFd, RawFd) {
        if d == 0 {
            (self.client, self.upstream)
        } else {
            (self.upstream, self.client)
        }
    }
}

struct Worker {
    ring: IoUring,
    listener: Socket,
    upstream: SockAddr,
    conns: Vec<Option<Box<Conn>>>,
    free: Vec<usize>,
    bufs: Option<Bufs>,
}

impl Worker {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every buffer and address an entry points to lives in
            // a boxed `Conn` (or in `self.upstream`) that is freed only
            // when its `inflight` count is back to zero.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            self.ring.submit().expect("io_uring_enter");
        }
    }

    fn submit(&mut self, slot: usize, e: squeue::Entry) {
        self.conns[slot].as_mut().unwrap().inflight += 1;
        self.push(e);
    }

    fn accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(0, Op::Accept));
        self.push(e);
    }

    fn on_accept(&mut self, client: RawFd) {
        let up = match Socket::new(
            self.upstream.domain(),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(_) => {
                unsafe { libc::close(client) };
                return;
            }
        };
        let _ = up.set_tcp_nodelay(true);
        let upstream = up.into_raw_fd();
        let single = !self.multishot();
        let dir = || Dir {
            buf: single.then(|| Box::new([0u8; BUF])),
            pos: 0,
            end: 0,
            done: false,
            queue: VecDeque::new(),
            sending: false,
            armed: false,
            eof: false,
        };
        let conn = Box::new(Conn {
            client,
            upstream,
            dirs: [dir(), dir()],
            inflight: 0,
            failed: false,
            closing: false,
        });
        let slot = match self.free.pop() {
            Some(s) => {
                self.conns[s] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        let e = opcode::Connect::new(
            types::Fd(upstream),
            self.upstream.as_ptr().cast(),
            self.upstream.len(),
        )
        .build()
        .user_data(ud(slot, Op::Connect));
        self.submit(slot, e);
    }

    fn recv(&mut self, slot: usize, d: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        let (from, _) = c.ends(d);
        let ptr = c.dirs[d]
            .buf
            .as_mut()
            .expect("single-shot mode")
            .as_mut_ptr();
        let e = opcode::Recv::new(types::Fd(from), ptr, BUF as u32)
            .build()
            .user_data(ud(slot, Op::of(Op::Recv0, d)));
        self.submit(slot, e);
    }

    fn send(&mut self, slot: usize, d: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        let (_, to) = c.ends(d);
        let dir = &c.dirs[d];
        let ptr = dir.buf.as_ref().expect("single-shot mode")[dir.pos..].as_ptr();
        let len = (dir.end - dir.pos) as u32;
        self.send_from(slot, d, to, ptr, len);
    }

    /// Submits the send of `len` bytes at `ptr` for direction `d`.
    fn send_from(&mut self, slot: usize, d: usize, to: RawFd, ptr: *const u8, len: u32) {
        let e = opcode::Send::new(types::Fd(to), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(slot, Op::of(Op::Send0, d)));
        self.submit(slot, e);
    }

    /// Multishot mode: arm the direction's receive.
    fn recv_multi(&mut self, slot: usize, d: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        let (from, _) = c.ends(d);
        c.dirs[d].armed = true;
        let e = opcode::RecvMulti::new(types::Fd(from), BGID)
            .build()
            .user_data(ud(slot, Op::of(Op::RecvM0, d)));
        self.submit(slot, e);
    }

    /// Multishot mode: send the front of the queue, or pass EOF on.
    fn pump(&mut self, slot: usize, d: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        let (_, to) = c.ends(d);
        if c.failed || c.dirs[d].sending {
            return;
        }
        if let Some(&(bid, len)) = c.dirs[d].queue.front() {
            let dir = &mut c.dirs[d];
            dir.sending = true;
            let base = self.bufs.as_ref().unwrap().addr(bid);
            // SAFETY: pos < len <= BSZ: within buffer `bid`.
            let ptr = unsafe { base.add(dir.pos) };
            let left = len - dir.pos as u32;
            self.send_from(slot, d, to, ptr, left);
        } else if c.dirs[d].eof && !c.dirs[d].done {
            self.pass_eof(slot, d);
        } else if !c.dirs[d].armed && !c.dirs[d].eof {
            // Ran out of provided buffers earlier; some are back now.
            self.recv_multi(slot, d);
        }
    }

    /// Direction `d` is over: its EOF goes on as a half-close, unless the
    /// other direction is over too (then both sockets close).
    fn pass_eof(&mut self, slot: usize, d: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        c.dirs[d].done = true;
        if !c.dirs[1 - d].done {
            let (_, to) = c.ends(d);
            let e = opcode::Shutdown::new(types::Fd(to), libc::SHUT_WR)
                .build()
                .user_data(ud(slot, Op::of(Op::Shut0, d)));
            self.submit(slot, e);
        }
    }

    fn multishot(&self) -> bool {
        self.bufs.is_some()
    }

    /// An error on either side: shut both sockets down so that the other
    /// direction's pending receive ends, then close once nothing is in
    /// flight.
    fn fail(&mut self, slot: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        if !c.failed {
            c.failed = true;
            unsafe {
                libc::shutdown(c.client, libc::SHUT_RDWR);
                libc::shutdown(c.upstream, libc::SHUT_RDWR);
            }
        }
    }

    fn maybe_close(&mut self, slot: usize) {
        let c = self.conns[slot].as_mut().unwrap();
        let over = c.failed || (c.dirs[0].done && c.dirs[1].done);
        if over && c.inflight == 0 && !c.closing {
            c.closing = true;
            let (a, b) = (c.client, c.upstream);
            self.submit(
                slot,
                opcode::Close::new(types::Fd(a))
                    .build()
                    .user_data(ud(slot, Op::Close)),
            );
            self.submit(
                slot,
                opcode::Close::new(types::Fd(b))
                    .build()
                    .user_data(ud(slot, Op::Close)),
            );
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let op = Op::from(user_data as u8);
        let slot = (user_data >> 8) as usize;
        if op == Op::Accept {
            if res >= 0 {
                self.on_accept(res);
            }
            if !cqueue::more(flags) {
                self.accept();
            }
            return;
        }
        let multi = self.multishot();
        let c = self.conns[slot].as_mut().unwrap();
        c.inflight -= 1;
        match op {
            Op::Accept => unreachable!(),
            Op::Connect => {
                if res < 0 || c.failed {
                    self.fail(slot);
                } else if self.multishot() {
                    self.recv_multi(slot, 0);
                    self.recv_multi(slot, 1);
                } else {
                    self.recv(slot, 0);
                    self.recv(slot, 1);
                }
            }
            Op::Recv0 | Op::Recv1 => {
                let d = op.dir(Op::Recv0);
                if c.failed || res < 0 {
                    self.fail(slot);
                } else if res == 0 {
                    self.pass_eof(slot, d);
                } else {
                    c.dirs[d].pos = 0;
                    c.dirs[d].end = res as usize;
                    self.send(slot, d);
                }
            }
            Op::RecvM0 | Op::RecvM1 => {
                let d = op.dir(Op::RecvM0);
                let more = cqueue::more(flags);
                if more {
                    // Counted once for the whole multishot request, which
                    // this completion did not end.
                    c.inflight += 1;
                } else {
                    c.dirs[d].armed = false;
                }
                if res > 0 {
                    let bid = cqueue::buffer_select(flags).expect("buffer id");
                    c.dirs[d].queue.push_back((bid, res as u32));
                    if c.failed {
                        // Given back when the connection is freed.
                    } else if !more {
                        self.recv_multi(slot, d);
                    }
                } else if res == 0 {
                    c.dirs[d].eof = true;
                } else if res != -libc::ENOBUFS {
                    self.fail(slot);
                }
                if !self.conns[slot].as_ref().unwrap().failed {
                    self.pump(slot, d);
                }
            }
            Op::Send0 | Op::Send1 if multi => {
                let d = op.dir(Op::Send0);
                c.dirs[d].sending = false;
                if c.failed || res <= 0 {
                    self.fail(slot);
                } else {
                    let dir = &mut c.dirs[d];
                    dir.pos += res as usize;
                    let (bid, len) = *dir.queue.front().unwrap();
                    if dir.pos >= len as usize {
                        dir.pos = 0;
                        dir.queue.pop_front();
                        self.bufs.as_mut().unwrap().give(bid);
                    }
                    self.pump(slot, d);
                }
            }
            Op::Send0 | Op::Send1 => {
                let d = op.dir(Op::Send0);
                if c.failed || res <= 0 {
                    self.fail(slot);
                } else {
                    c.dirs[d].pos += res as usize;
                    if c.dirs[d].pos < c.dirs[d].end {
                        self.send(slot, d);
                    } else {
                        self.recv(slot, d);
                    }
                }
            }
            Op::Shut0 | Op::Shut1 => {}
            Op::Close => {
                if c.inflight == 0 {
                    let conn = self.conns[slot].take().unwrap();
                    if let Some(bufs) = self.bufs.as_mut() {
                        for dir in &conn.dirs {
                            for &(bid, _) in &dir.queue {
                                bufs.give(bid);
                            }
                        }
                    }
                    self.free.push(slot);
                }
                return;
            }
        }
        self.maybe_close(slot);
    }

    fn run(mut self) -> io::Result<()> {
        self.accept();
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(ENTRIES as usize);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (u, r, f) in done.drain(..) {
                self.complete(u, r, f);
            }
        }
    }
}

fn listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Inherited by accepted sockets, as cplb's listener does.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: uring-proto LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR");
    let threads = args
        .get(3)
        .map(|t| t.parse().expect("THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    eprintln!(
        "uring-proto: {threads} threads, {listen} -> {upstream}, receive: {}",
        std::env::var("URING_PROTO_RECV").unwrap_or_else(|_| "multishot".into())
    );
    // Each thread builds its own ring: a SINGLE_ISSUER ring only takes
    // submissions from the thread that created it.
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let ring = IoUring::builder()
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_coop_taskrun()
                    .build(ENTRIES)?;
                let bufs = match std::env::var("URING_PROTO_RECV").as_deref() {
                    Ok("single") => None,
                    _ => Some(Bufs::new(&ring)?),
                };
                Worker {
                    bufs,
                    ring,
                    listener: listener(listen)?,
                    upstream: upstream.into(),
                    conns: Vec::new(),
                    free: Vec::new(),
                }
                .run()
            })
        })
        .collect();
    for h in handles {
        if let Err(e) = h.join().expect("worker panicked") {
            eprintln!("uring-proto: {e}");
            std::process::exit(1);
        }
    }
}
