//! Zero-copy forwarding with splice(2): socket -> pipe -> socket, the bytes
//! never entering user space. Pipes are lent per direction only while they
//! hold bytes, from a small per-thread free list, like `pool` buffers, so
//! an idle connection holds no pipe.
//!
//! The free list must only ever hold empty pipes: a pipe that still held
//! bytes would pour one connection's bytes into the next connection that
//! borrows it. So the pipe counts its own bytes, and `give` pools it only
//! when that count is zero; a pipe given back with bytes in it is closed.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Bytes moved per splice call; the pipe is sized to hold them.
pub(super) const CHUNK: usize = 256 * 1024;
const _: () = assert!(CHUNK <= u32::MAX as usize);
/// Per worker thread; beyond it, drained pipes are closed. Small, because
/// each idle pipe holds two descriptors, which matter under fd pressure.
const KEEP: usize = 8;

pub(super) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes spliced in and not yet out: what the kernel's pipe holds (at
    /// most `CHUNK`; `u32` keeps a connection's in-flight state small).
    len: u32,
}

thread_local! {
    static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid, writable array of two descriptors, which
        // is what pipe2 writes on success; on failure it writes nothing.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open, fresh, and
        // owned by nothing else: each `OwnedFd` becomes their only owner.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor `w` keeps open; F_SETPIPE_SZ takes an
        // int and touches no memory of ours. Best effort: a larger pipe means
        // fewer syscalls per megabyte; the default 64 KiB still works if the
        // limit refuses it.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Pipe { r, w, len: 0 })
    }

    /// An empty pipe from the free list, or a new one (None when out of fds).
    pub(super) fn take() -> Option<Pipe> {
        FREE.with(|f| f.borrow_mut().pop())
            .or_else(|| Pipe::new().ok())
    }

    /// Gives the pipe back: an empty one goes to the free list (while it
    /// has room); one still holding bytes is closed, never reused.
    pub(super) fn give(self) {
        if self.len != 0 {
            return;
        }
        // Also called from `Drop`: at thread exit, with the free list
        // gone, the pipe is simply closed.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(self);
            }
        });
    }

    /// Pipes in this thread's free list.
    #[cfg(test)]
    pub(super) fn free_len() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    /// Bytes in the pipe, spliced in and not yet out.
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }

    /// socket -> pipe: up to `CHUNK` bytes.
    pub(super) fn fill_from(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        // Only ever filled when empty (`copy` drains it first), so `n` and
        // the count stay within CHUNK; saturating keeps a surprise finite.
        let n = splice(socket.as_raw_fd(), self.w.as_raw_fd(), CHUNK)?;
        self.len = self
            .len
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        Ok(n)
    }

    /// pipe -> socket: up to all the bytes in the pipe.
    pub(super) fn drain_to(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice(self.r.as_raw_fd(), socket.as_raw_fd(), self.len as usize)?;
        // splice moves at most `len` bytes; saturating keeps a kernel
        // surprise from wrapping the count.
        self.len = self
            .len
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: a plain syscall on two descriptors the callers borrow (so they
    // stay open for the call), with null offsets (both are pipes or
    // sockets); it reads and writes no memory of ours.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// What the kernel's pipe holds, whatever the count says.
    fn bytes_in_kernel(p: &Pipe) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, into `n`, which outlives the call;
        // `p.r` is open while `p` is borrowed.
        let rc = unsafe { libc::ioctl(p.r.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        n as usize
    }

    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn the_count_follows_fill_and_drain() {
        let (mut a, b) = socket_pair();
        let (c, d) = socket_pair();
        a.write_all(b"hello").unwrap();
        let mut p = Pipe::take().unwrap();
        assert_eq!(p.len(), 0);
        assert_eq!(p.fill_from(b.as_fd()).unwrap(), 5);
        assert_eq!((p.len(), bytes_in_kernel(&p)), (5, 5));
        assert_eq!(p.drain_to(c.as_fd()).unwrap(), 5);
        assert_eq!((p.len(), bytes_in_kernel(&p)), (0, 0));
        drop(d);
    }

    /// One connection's bytes must never reach the next borrower.
    #[test]
    fn a_pipe_given_back_with_bytes_is_closed_not_reused() {
        let (mut a, b) = socket_pair();
        a.write_all(b"someone else's bytes").unwrap();
        let mut p = Pipe::take().unwrap();
        let n = p.fill_from(b.as_fd()).unwrap();
        assert!(n > 0);
        p.give();
        let next = Pipe::take().unwrap();
        println!(
            "pipe given back with {n} bytes; the next borrower's holds {}",
            bytes_in_kernel(&next)
        );
        assert_eq!(next.len(), 0);
        assert_eq!(bytes_in_kernel(&next), 0, "a full pipe was pooled");
        // An empty one is reused.
        let fd = next.r.as_raw_fd();
        next.give();
        assert_eq!(Pipe::take().unwrap().r.as_raw_fd(), fd);
    }
}
