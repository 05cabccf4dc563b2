//! The process's global allocator: 128-byte-aligned blocks of up to 4 KiB
//! from per-thread free lists; every other layout goes to `System` (glibc).
//!
//! Why: per proxied connection tokio makes three 128-aligned allocations
//! (the task cell, `repr(align(128))`, a multiple of 128 B; two
//! `Arc<ScheduledIo>`, 256 B each). glibc serves an aligned request with
//! `_int_memalign`: it takes size + align + MINSIZE from the heap and frees
//! the fragments before and after the block, which nothing reuses while the
//! connections sit idle: about 160 B stranded per allocation. Measured
//! (bench/e2e memory, 5,000 idle connections): 1,944 B per connection with
//! glibc alone, 1,516 B with this allocator.
//!
//! How: a layout with an alignment of 128 (the one power of two in
//! (64, 128]) and a size of at most [`MAX_SIZE`] belongs to a size class,
//! a multiple of 128. Each thread keeps a free list per class and a bump
//! region carved from [`CHUNK`]-byte chunks it gets from `System`. A freed
//! block goes on the list of the freeing thread (the link is the block's
//! first word), whichever thread carved it. Blocks are never returned to
//! `System` nor to the OS; glibc does not return the memory of idle
//! connections either (it keeps it in its heap).
//!
//! Which path a block takes is decided by its layout alone, at alloc and at
//! dealloc: no header, no lookup. So every path that serves a class layout
//! must yield a block that may go on a free list: a class-size,
//! 128-aligned block that is never given back to `System`. When the
//! thread's state cannot be used (its exit hook has run; `try_with`
//! failing, which a `const` thread-local without `Drop` never does on
//! Linux, is handled the same way), alloc takes a class-size block from
//! `System` (it then simply stays in this allocator), and dealloc pushes the
//! block on the global orphan list of its class.
//!
//! Threads: the thread-local state has no `Drop`, so no TLS destructor is
//! registered and it stays usable during thread teardown. A thread that
//! holds blocks sets a pthread key whose destructor, at thread exit, moves
//! its free lists to the global orphan lists (lock-free: push a chain with
//! CAS, take a whole list with `swap`, so no ABA). A thread whose list is
//! empty adopts its class's orphans before carving. Not recovered: the
//! uncarved rest of an exiting thread's current chunk (address space
//! this allocator never touched).
//!
//! alloc and dealloc never allocate, lock or panic. The one exception is
//! the first block a thread holds: `pthread_key_create` (once per process)
//! and `pthread_setspecific`, which may `calloc` inside glibc (its own
//! malloc, never this allocator) for keys past the first 32.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The alignment served from the free lists; also the size-class step.
pub const ALIGN: usize = 128;
/// The largest size served from the free lists.
pub const MAX_SIZE: usize = 4096;
/// The size of the chunks carved into blocks. 64 KiB: one `System` call per
/// ~40 proxied connections; below glibc's 128 KiB mmap threshold, so a
/// chunk comes from the thread's arena rather than a mapping of its own;
/// and small next to the 8 MiB idle cap for the few threads (control
/// plane, discovery) that only ever carve a handful of blocks (only touched
/// pages are resident anyway). Aligned to `ALIGN` only: blocks need no
/// more, and glibc's memalign waste is then ~160 B per 64 KiB.
pub const CHUNK: usize = 64 * 1024;
const CLASSES: usize = MAX_SIZE / ALIGN;

/// The global allocator (installed in src/main.rs).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlignedAlloc;

/// A size class. Invariant: `self.0 < CLASSES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class(usize);

impl Class {
    /// The class serving `layout`, or `None` for a layout that goes to
    /// `System`.
    fn of(layout: Layout) -> Option<Class> {
        let fits = layout.align() > 64 && layout.align() <= ALIGN && layout.size() <= MAX_SIZE;
        // A zero size (callers must not, but) takes the smallest class.
        fits.then(|| Class(layout.size().max(1).div_ceil(ALIGN) - 1))
    }

    /// The class of exactly `size` bytes, a multiple of `ALIGN` in
    /// `ALIGN..=MAX_SIZE`.
    fn exact(size: usize) -> Option<Class> {
        (size.is_multiple_of(ALIGN) && (ALIGN..=MAX_SIZE).contains(&size))
            .then(|| Class(size / ALIGN - 1))
    }

    fn size(self) -> usize {
        (self.0 + 1) * ALIGN
    }

    fn layout(self) -> Layout {
        // SAFETY: ALIGN is a power of two and size() <= MAX_SIZE, far from
        // overflowing isize when rounded up to ALIGN.
        unsafe { Layout::from_size_align_unchecked(self.size(), ALIGN) }
    }
}

/// The first word of a free block.
#[repr(C)]
struct Link {
    next: *mut Link,
}

/// A free block: `size()` bytes of its class, `ALIGN`-aligned, that nobody
/// uses and that is never given back to `System`. Whoever holds the
/// `Block` owns those bytes.
struct Block(NonNull<Link>);

impl Block {
    /// # Safety
    /// `ptr` points to `class.size()` bytes, `ALIGN`-aligned, that the
    /// caller owns and gives up for good: no one reads or writes them
    /// after, and they must not go back to `System` (they may come from
    /// it).
    unsafe fn new(ptr: NonNull<u8>) -> Block {
        Block(ptr.cast())
    }

    fn into_ptr(self) -> *mut u8 {
        self.0.as_ptr().cast()
    }
}

/// A free list of one class. Invariant: the head is null or the first
/// `Block` of a null-terminated chain of `Block`s of the list's class,
/// owned by the list.
struct List(Cell<*mut Link>);

impl List {
    const fn new() -> List {
        List(Cell::new(ptr::null_mut()))
    }

    fn push(&self, b: Block) {
        // SAFETY: the Block owns its bytes, at least ALIGN >= size_of Link
        // and aligned for it; we write its link and own it from here.
        unsafe { b.0.as_ptr().write(Link { next: self.0.get() }) };
        self.0.set(b.0.as_ptr());
    }

    fn pop(&self) -> Option<Block> {
        let head = NonNull::new(self.0.get())?;
        // SAFETY: by the list's invariant the head is a free block we own
        // whose first word is a Link.
        self.0.set(unsafe { head.as_ptr().read().next });
        Some(Block(head))
    }

    /// The whole list as a chain, leaving it empty.
    fn take(&self) -> Option<Chain> {
        let head = NonNull::new(self.0.replace(ptr::null_mut()))?;
        let mut tail = head;
        // SAFETY: every element of the chain is a block we own (invariant).
        while let Some(next) = NonNull::new(unsafe { tail.as_ptr().read().next }) {
            tail = next;
        }
        Some(Chain { head, tail })
    }

    /// Takes a chain taken from the orphans as the list. The list is empty.
    fn adopt(&self, head: NonNull<Link>) {
        debug_assert!(self.0.get().is_null());
        self.0.set(head.as_ptr());
    }
}

/// A null-terminated chain of free blocks of one class, from `head` to
/// `tail`, owned by the holder.
struct Chain {
    head: NonNull<Link>,
    tail: NonNull<Link>,
}

impl Chain {
    fn one(b: Block) -> Chain {
        // SAFETY: the Block owns its bytes (see List::push).
        unsafe {
            b.0.as_ptr().write(Link {
                next: ptr::null_mut(),
            })
        };
        Chain {
            head: b.0,
            tail: b.0,
        }
    }
}

/// The blocks of one class left by exited threads (and by frees on a
/// thread whose state is gone). Lock-free: chains are pushed with CAS and
/// only ever taken all at once with `swap`, so a pop never reads a link a
/// concurrent thread may be reusing (no ABA).
struct Orphans(AtomicPtr<Link>);

impl Orphans {
    fn push(&self, chain: Chain) {
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it.
            unsafe { chain.tail.as_ptr().write(Link { next: head }) };
            // Release: the taker (Acquire) sees the links written above.
            match self.0.compare_exchange_weak(
                head,
                chain.head.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// All orphans of the class, as a chain whose head is returned.
    fn take(&self) -> Option<NonNull<Link>> {
        // A plain load first: the common case (none) writes nothing shared.
        if self.0.load(Ordering::Relaxed).is_null() {
            return None;
        }
        NonNull::new(self.0.swap(ptr::null_mut(), Ordering::Acquire))
    }
}

static ORPHANS: [Orphans; CLASSES] = [const { Orphans(AtomicPtr::new(ptr::null_mut())) }; CLASSES];

/// Whether a thread's exit hook is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// Holds nothing yet.
    Unset,
    /// Armed (or could not be: then the thread's lists strand at exit).
    Set,
    /// Ran: the thread is exiting and its lists are orphans.
    Exited,
}

/// One thread's state. No `Drop`: see the module's doc.
struct Heap {
    free: [List; CLASSES],
    /// The uncarved rest of the current chunk: `bump..end`, both
    /// `ALIGN`-aligned (or both null), owned by this thread.
    bump: Cell<*mut u8>,
    end: Cell<*mut u8>,
    hook: Cell<Hook>,
    /// Blocks served from lists or chunks (tests tell the paths apart).
    #[cfg(test)]
    served: Cell<usize>,
}

thread_local! {
    static HEAP: Heap = const {
        Heap {
            free: [const { List::new() }; CLASSES],
            bump: Cell::new(ptr::null_mut()),
            end: Cell::new(ptr::null_mut()),
            hook: Cell::new(Hook::Unset),
            #[cfg(test)]
            served: Cell::new(0),
        }
    };
}

impl Heap {
    /// A block of `class`, or null when `System` has no memory.
    fn alloc(&self, class: Class) -> *mut u8 {
        if self.hook.get() == Hook::Exited {
            return from_system(class);
        }
        #[cfg(test)]
        self.served.set(self.served.get() + 1);
        let list = &self.free[class.0];
        if let Some(b) = list.pop() {
            return b.into_ptr();
        }
        if let Some(head) = ORPHANS[class.0].take() {
            list.adopt(head);
            if let Some(b) = list.pop() {
                return b.into_ptr();
            }
        }
        self.carve(class)
    }

    fn carve(&self, class: Class) -> *mut u8 {
        let size = class.size();
        let (mut bump, mut end) = (self.bump.get(), self.end.get());
        if end.addr() - bump.addr() < size {
            self.spill();
            // SAFETY: CHUNK_LAYOUT has a non-zero size.
            let chunk = unsafe { System.alloc(CHUNK_LAYOUT) };
            if chunk.is_null() {
                return chunk;
            }
            self.arm();
            bump = chunk;
            // SAFETY: the chunk is CHUNK bytes long.
            end = unsafe { chunk.add(CHUNK) };
            self.end.set(end);
        }
        // SAFETY: bump + size <= end, inside the chunk.
        self.bump.set(unsafe { bump.add(size) });
        bump
    }

    /// Puts the uncarved rest of the chunk on the free lists, as blocks of
    /// the largest class that fits (at most one: carve only spills a rest
    /// smaller than a class).
    fn spill(&self) {
        let (mut bump, end) = (self.bump.get(), self.end.get());
        while let Some(class) = Class::exact((end.addr() - bump.addr()).min(MAX_SIZE)) {
            // SAFETY: bump..end is ours, ALIGN-aligned, never handed out;
            // it becomes this block.
            let b = unsafe { Block::new(NonNull::new_unchecked(bump)) };
            self.free[class.0].push(b);
            // SAFETY: class.size() <= end - bump.
            bump = unsafe { bump.add(class.size()) };
        }
        self.bump.set(bump);
    }

    fn free(&self, class: Class, b: Block) {
        match self.hook.get() {
            Hook::Exited => ORPHANS[class.0].push(Chain::one(b)),
            Hook::Unset | Hook::Set => {
                self.arm();
                self.free[class.0].push(b);
            }
        }
    }

    /// Arms the exit hook the first time the thread holds blocks.
    fn arm(&self) {
        if self.hook.get() != Hook::Unset {
            return;
        }
        self.hook.set(Hook::Set);
        if let Some(key) = exit_key() {
            // SAFETY: a key from pthread_key_create; the value is never
            // dereferenced (non-null only so that the destructor runs).
            unsafe { libc::pthread_setspecific(key, NonNull::<c_void>::dangling().as_ptr()) };
        }
    }

    /// At thread exit: the lists become orphans.
    fn abandon(&self) {
        self.hook.set(Hook::Exited);
        for (list, orphans) in self.free.iter().zip(&ORPHANS) {
            if let Some(chain) = list.take() {
                orphans.push(chain);
            }
        }
    }
}

const CHUNK_LAYOUT: Layout = match Layout::from_size_align(CHUNK, ALIGN) {
    Ok(l) => l,
    Err(_) => panic!("CHUNK and ALIGN make a layout"),
};

/// A class-size block from `System`, for when the thread's state cannot
/// be used. It is never given back: dealloc treats it like any block.
fn from_system(class: Class) -> *mut u8 {
    // SAFETY: the class layout has a non-zero size.
    unsafe { System.alloc(class.layout()) }
}

const NO_KEY: usize = usize::MAX;
static EXIT_KEY: AtomicUsize = AtomicUsize::new(NO_KEY);

/// The pthread key whose destructor runs `on_thread_exit`, created once.
fn exit_key() -> Option<libc::pthread_key_t> {
    let key = EXIT_KEY.load(Ordering::Acquire);
    if key != NO_KEY {
        return libc::pthread_key_t::try_from(key).ok();
    }
    let mut new: libc::pthread_key_t = 0;
    // SAFETY: `new` is a valid out pointer; the destructor is a plain fn.
    if unsafe { libc::pthread_key_create(&mut new, Some(on_thread_exit)) } != 0 {
        return None;
    }
    match EXIT_KEY.compare_exchange(NO_KEY, new as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(new),
        Err(theirs) => {
            // SAFETY: `new` is our own key, never set.
            unsafe { libc::pthread_key_delete(new) };
            libc::pthread_key_t::try_from(theirs).ok()
        }
    }
}

extern "C" fn on_thread_exit(_: *mut c_void) {
    // Never fails for a const thread-local without Drop; if it did, the
    // lists would strand, nothing worse.
    let _ = HEAP.try_with(Heap::abandon);
}

// SAFETY: every block handed out is `class.size() >= layout.size()` bytes,
// ALIGN-aligned (chunks are, and every class size is a multiple of ALIGN),
// and owned by the caller until dealloc: a block is on at most one list,
// and leaves it when handed out. Other layouts are System's own.
unsafe impl GlobalAlloc for AlignedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Class::of(layout) {
            Some(class) => HEAP
                .try_with(|h| h.alloc(class))
                .unwrap_or_else(|_| from_system(class)),
            // SAFETY: the caller's layout contract, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = Class::of(layout) else {
            // SAFETY: a layout of no class was allocated by System.
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: the caller gives up `ptr`, which alloc served for this
        // layout: a class-size, ALIGN-aligned block never to go back to
        // System, whichever path served it. try_with runs the closure only
        // when it succeeds, so the block is made once, on one path.
        let block = || unsafe { Block::new(NonNull::new_unchecked(ptr)) };
        if HEAP.try_with(|h| h.free(class, block())).is_err() {
            ORPHANS[class.0].push(Chain::one(block()));
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Class::of(layout).is_none() {
            // SAFETY: the caller's layout contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's layout contract, passed on.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: p has at least layout.size() bytes (a reused block
            // holds old data).
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded up to the
        // alignment, does not overflow isize.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Class::of(layout), Class::of(new)) {
            // SAFETY: System allocated ptr (no class); the contract passed on.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            // The block already has room: class size >= new_size.
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                // SAFETY: the caller's contract, for the new layout.
                let to = unsafe { self.alloc(new) };
                if !to.is_null() {
                    // SAFETY: both hold at least the smaller size; distinct
                    // live allocations do not overlap. Then the old one is
                    // freed with the layout it was allocated with.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                to
            }
        }
    }
}

#[cfg(test)]
mod tests;
