//! Zero-copy forwarding with splice(2): socket -> pipe -> socket, the bytes
//! never entering user space. Pipes are lent per direction only while they
//! hold bytes, from a small per-thread free list, like `pool` buffers, so
//! an idle connection holds no pipe.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes moved per splice call; the pipe is sized to hold them.
pub const CHUNK: usize = 256 * 1024;
/// Per worker thread; beyond it, drained pipes are closed. Small, because
/// each idle pipe holds two descriptors, which matter under fd pressure.
const KEEP: usize = 8;

pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

thread_local! {
    static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds` on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let p = unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: a larger pipe means fewer syscalls per megabyte; the
        // default 64 KiB still works if the limit refuses it.
        unsafe { libc::fcntl(p.w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(p)
    }

    /// A pipe from the free list, or a new one (None when out of fds).
    pub fn take() -> Option<Pipe> {
        FREE.with(|f| f.borrow_mut().pop())
            .or_else(|| Pipe::new().ok())
    }

    /// Returns an *empty* pipe to the free list.
    pub fn give(self) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(self);
            }
        });
    }

    /// socket -> pipe: up to `CHUNK` bytes.
    pub fn fill_from(&self, socket: RawFd) -> io::Result<usize> {
        splice(socket, self.w.as_raw_fd(), CHUNK)
    }

    /// pipe -> socket: up to `len` bytes.
    pub fn drain_to(&self, socket: RawFd, len: usize) -> io::Result<usize> {
        splice(self.r.as_raw_fd(), socket, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors the caller keeps open.
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
