//! Copy buffers, lent only while bytes are in flight. An idle proxied
//! connection (a quiet watch) holds no buffer at all; buffers go back to a
//! small per-thread free list, so the hot path takes no lock.

use std::cell::RefCell;

pub(super) const BUF_SIZE: usize = 32 * 1024;
/// A fixed-size array, so a connection holds a thin pointer to it.
pub(super) type Buf = [u8; BUF_SIZE];
/// Per worker thread; beyond it, returned buffers are freed.
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<Buf>>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn take() -> Box<Buf> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Box::new([0u8; BUF_SIZE]))
}

/// Also called from `Drop`, so it must not panic when the thread's free
/// list is already gone (thread exit): the buffer is simply freed then.
pub(super) fn give(buf: Box<Buf>) {
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(buf);
        }
    });
}

/// Buffers in this thread's free list.
#[cfg(test)]
pub(super) fn free_len() -> usize {
    FREE.with(|f| f.borrow().len())
}
