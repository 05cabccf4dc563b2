//! What wakes a proxied connection, besides its sockets: a timing wheel of
//! `Notify` slots per worker thread. Each connection waits on one slot of
//! its thread's wheel, the one of the tick when it next has to look at its
//! idleness (`copy::idle`), and the wheel's task, on the same thread
//! (`Wheels::run_here`), wakes one slot per tick. Events that concern
//! connections wherever they wait (an eviction, a removal by discovery, the
//! end of the shutdown drain) wake every slot of every wheel
//! (`Wheels::wake_all`); each connection then reads whether the event is
//! its own.
//!
//! Why not a tokio `Sleep` per connection: it is 112 bytes, a third of a
//! connection's task, and every open connection holds its task for its
//! whole life. A waiter on a slot is the 64 bytes the connection spends on
//! events anyway. Why a wheel, not one signal for everyone: a sweep that
//! woke every connection every few seconds would cost CPU in proportion to
//! the idle connections; here an idle connection is woken about three
//! times per `idle_timeout` (after `KEEPALIVE_AFTER`, once on the way,
//! and at its timeout). Why one per worker: its wake-ups stay on the
//! thread, and its ticker keeps the thread's tokio timer busy (see `tick`).

use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;

use crate::clock::millis;

/// Slots in the wheel: with the default `idle_timeout` (tick 5 s) the wheel
/// spans 640 s, past the 600 s timeout.
const SLOTS: u64 = 128;
/// The finest tick: short test timeouts do not turn the wheel into a spin.
const MIN: Duration = Duration::from_millis(10);
/// The coarsest: keepalive is armed within this of `KEEPALIVE_AFTER`, and a
/// connection closes at most this late.
const MAX: Duration = Duration::from_secs(5);

struct Wheel {
    slots: Box<[Arc<Notify>]>,
    /// The last tick woken. Stored before its slot is woken: a waiter made
    /// for tick `t` that then reads `fired < t` is sure to be woken by `t`.
    fired: AtomicU64,
    /// Milliseconds per tick now (`run` sets it from the config in force).
    tick_ms: AtomicU64,
}

impl Default for Wheel {
    fn default() -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Arc::new(Notify::new())).collect(),
            fired: AtomicU64::new(0),
            tick_ms: AtomicU64::new(millis(MAX)),
        }
    }
}

/// The tick for `idle_timeout`: a sixteenth of it (a connection closes at
/// most that late, never early), within `MIN..=MAX`. Also at most half of
/// `connect_timeout`, so that the ticker's sleep is always the worker's
/// earliest timer: tokio writes to its eventfd whenever a new timer is
/// earlier than all it has, which each connect's timeout otherwise was
/// (`bench/e2e/syscalls.py`: 0.70 writes per new connection, 0.01 with a
/// timer always earlier).
pub(crate) fn tick(idle_timeout: Duration, connect_timeout: Duration) -> Duration {
    (idle_timeout / 16).min(connect_timeout / 2).clamp(MIN, MAX)
}

thread_local! {
    /// This worker thread's wheel, and the `Wheels` it belongs to: set by
    /// `Wheels::run_here` while it runs. (The `Weak` keeps that `Wheels`'
    /// address from being reused while this names it.)
    static LOCAL: RefCell<Option<(Weak<Wheels>, Arc<Wheel>)>> = const { RefCell::new(None) };
}

/// Clears `LOCAL` when `run_here` ends or is dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        // At thread exit `LOCAL` may already be gone.
        let _ = LOCAL.try_with(|local| local.borrow_mut().take());
    }
}

/// Every wheel of one proxy: one per worker thread, and one for
/// connections on any other thread (unit tests), which no task turns.
pub(crate) struct Wheels {
    all: Mutex<Vec<Arc<Wheel>>>,
    other: Arc<Wheel>,
}

impl Default for Wheels {
    fn default() -> Wheels {
        let other = Arc::new(Wheel::default());
        Wheels {
            all: Mutex::new(vec![other.clone()]),
            other,
        }
    }
}

impl Wheels {
    /// A waiter on this thread's wheel (see `Wheel::waiter`). A
    /// connection's task never leaves the worker thread it started on, so
    /// its waiters are always on that worker's wheel.
    pub(crate) fn waiter(&self, due_ms: u64, now_ms: u64) -> OwnedNotified {
        LOCAL.with(|local| match &*local.borrow() {
            Some((owner, wheel)) if std::ptr::eq(owner.as_ptr(), self) => {
                wheel.waiter(due_ms, now_ms)
            }
            _ => self.other.waiter(due_ms, now_ms),
        })
    }

    /// Wakes every waiter, wherever it waits. Off the data plane
    /// (evictions, removals, the drain's end): the lock is the control
    /// plane's.
    pub(crate) fn wake_all(&self) {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        for wheel in all.iter() {
            wheel.wake_all();
        }
    }

    /// Gives the calling thread a wheel of its own and turns it until
    /// `stop`, at the tick `tick` returns (asked again each tick, so a
    /// reload's values apply from the next one). Run it as a task on a
    /// worker's single-threaded runtime, spawned before the worker's accept
    /// loop so the wheel is in place before the first connection.
    pub(crate) async fn run_here(
        self: Arc<Self>,
        tick: impl Fn() -> Duration,
        stop: CancellationToken,
    ) {
        let wheel = Arc::new(Wheel::default());
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(wheel.clone());
        LOCAL.with(|local| *local.borrow_mut() = Some((Arc::downgrade(&self), wheel.clone())));
        let _installed = Installed;
        wheel.run(tick, stop).await;
    }
}

impl Wheel {
    /// A waiter woken at the first tick at or after `due_ms` (`Clock` ms;
    /// now is `now_ms`), by `wake_all`, or early, at the wheel's far end,
    /// when `due_ms` lies beyond it. Never later than due plus a tick.
    fn waiter(&self, due_ms: u64, now_ms: u64) -> OwnedNotified {
        let tick_ms = self.tick_ms.load(SeqCst).max(1);
        let ahead = due_ms.saturating_sub(now_ms).div_ceil(tick_ms);
        let ahead = ahead.clamp(1, SLOTS - 1);
        loop {
            let t = self.fired.load(SeqCst) + ahead;
            let waiter = self.slot(t).clone().notified_owned();
            // Made before tick `t` fired: `t`'s wake-up counts it. (The
            // slot's previous tick, `t - SLOTS`, fired before `fired` was
            // read.) Otherwise the wheel turned meanwhile: place it again.
            if self.fired.load(SeqCst) < t {
                return waiter;
            }
        }
    }

    /// Wakes every waiter of this wheel.
    fn wake_all(&self) {
        for slot in &*self.slots {
            slot.notify_waiters();
        }
    }

    /// Turns the wheel one tick.
    fn turn(&self) {
        let t = self.fired.load(SeqCst) + 1;
        self.fired.store(t, SeqCst);
        self.slot(t).notify_waiters();
    }

    fn slot(&self, t: u64) -> &Arc<Notify> {
        // SLOTS is the slice's length; the remainder is below it.
        &self.slots[(t % SLOTS) as usize]
    }

    /// Turns the wheel until `stop`, a `tick()` apart.
    async fn run(&self, tick: impl Fn() -> Duration, stop: CancellationToken) {
        loop {
            let every = tick();
            self.tick_ms.store(millis(every), SeqCst);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => self.turn(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn woken(w: &mut std::pin::Pin<&mut OwnedNotified>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        w.as_mut().poll(&mut cx) == Poll::Ready(())
    }

    #[test]
    fn the_tick_is_a_sixteenth_of_the_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(tick(s(1), s(60)), Duration::from_micros(62_500));
        assert_eq!(tick(s(600), s(60)), MAX);
        assert_eq!(tick(Duration::from_millis(50), s(60)), MIN);
        assert_eq!(tick(Duration::MAX, Duration::MAX), MAX);
        // Shorter than half the connect timeout.
        assert_eq!(tick(s(3000), s(3)), Duration::from_millis(1_500));
        assert_eq!(tick(s(3000), Duration::from_millis(1)), MIN);
    }

    /// A waiter is woken by the first tick at or after its due time, not
    /// before.
    #[test]
    fn a_waiter_wakes_at_its_tick() {
        let wheel = Wheel::default();
        let ms = millis(MAX);
        // Due in 2.5 ticks: the third tick from now.
        let mut w = pin!(wheel.waiter(5 * ms / 2, 0));
        for turned in 1..=2 {
            wheel.turn();
            assert!(!woken(&mut w), "woken early, at tick {turned}");
        }
        wheel.turn();
        assert!(woken(&mut w), "not woken at its tick");
    }

    /// Already due, or due beyond the wheel: the next tick, or the far end.
    #[test]
    fn past_and_far_due_times_are_clamped() {
        let wheel = Wheel::default();
        let mut now = pin!(wheel.waiter(0, 1_000));
        wheel.turn();
        assert!(woken(&mut now), "an overdue waiter waits for one tick");
        let mut far = pin!(wheel.waiter(u64::MAX, 0));
        for _ in 1..SLOTS - 1 {
            wheel.turn();
            assert!(!woken(&mut far), "woken before the far end");
        }
        wheel.turn();
        assert!(woken(&mut far), "not woken at the far end");
    }

    /// Placed while another thread turns the wheel as fast as it can, a
    /// waiter is still woken by its own tick, never a whole turn later (the
    /// turn it would wait if placed on a slot whose tick had just fired).
    #[test]
    fn a_waiter_placed_while_the_wheel_turns_is_woken_by_its_tick() {
        use std::sync::atomic::AtomicBool;
        let wheel = Arc::new(Wheel::default());
        let stop = Arc::new(AtomicBool::new(false));
        let turner = {
            let (wheel, stop) = (wheel.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    wheel.turn();
                }
            })
        };
        let mut missed = 0;
        for _ in 0..20_000 {
            let mut w = pin!(wheel.waiter(0, 0));
            // Its tick is at most the next one after this.
            let placed = wheel.fired.load(SeqCst);
            loop {
                let fired = wheel.fired.load(SeqCst);
                if woken(&mut w) {
                    break;
                }
                // Tick `placed + 2` was stored, so `placed + 1` has woken
                // its slot.
                if fired >= placed + 2 {
                    missed += 1;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        stop.store(true, SeqCst);
        turner.join().unwrap();
        println!(
            "turned {} ticks; {missed} waiters missed theirs",
            wheel.fired.load(SeqCst)
        );
        assert_eq!(missed, 0);
    }

    /// Makes this test's thread a worker of `wheels`, its wheel turned
    /// every `tick` until the token is cancelled; the handle ends after.
    async fn worker(
        wheels: &Arc<Wheels>,
        tick: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let ticker = tokio::spawn(wheels.clone().run_here(move || tick, stop.clone()));
        // The ticker installs the wheel on its first poll.
        tokio::task::yield_now().await;
        (stop, ticker)
    }

    /// On a thread that runs a wheel, waiters go on that wheel, and its
    /// ticker wakes them at their tick.
    #[tokio::test(start_paused = true)]
    async fn a_workers_waiters_are_woken_by_its_own_ticker() {
        let wheels = Arc::new(Wheels::default());
        let (stop, _ticker) = worker(&wheels, MIN).await;
        let start = tokio::time::Instant::now();
        let due = 3 * millis(MIN) + 5;
        tokio::time::timeout(Duration::from_secs(1), wheels.waiter(due, 0))
            .await
            .expect("not woken: the waiter is not on this thread's wheel");
        let after = start.elapsed();
        println!("due after {due} ms, woken after {after:?}");
        assert!(after >= Duration::from_millis(due), "woken early");
        stop.cancel();
    }

    /// `wake_all` reaches the waiters of every worker's wheel, and of the
    /// one for other threads.
    #[tokio::test]
    async fn wake_all_reaches_every_wheel() {
        let wheels = Arc::new(Wheels::default());
        let (stop, _ticker) = worker(&wheels, Duration::from_secs(3600)).await;
        let on_worker = wheels.waiter(u64::MAX, 0);
        let elsewhere =
            std::thread::scope(|s| s.spawn(|| wheels.waiter(u64::MAX, 0)).join()).unwrap();
        wheels.wake_all();
        let both = async { tokio::join!(on_worker, elsewhere) };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("a waiter was not woken");
        stop.cancel();
    }

    /// A thread may run one proxy's wheel and still hold another proxy's
    /// waiters (tests, `cplb demo`): those go on the other proxy's wheels,
    /// where its `wake_all` reaches them. And once `run_here` ends, the
    /// thread's wheel is forgotten.
    #[tokio::test]
    async fn waiters_stay_with_their_own_proxys_wheels() {
        let (a, b) = (Arc::new(Wheels::default()), Arc::new(Wheels::default()));
        let (stop, ticker) = worker(&a, Duration::from_secs(3600)).await;
        let of_b = b.waiter(u64::MAX, 0);
        b.wake_all();
        tokio::time::timeout(Duration::from_secs(10), of_b)
            .await
            .expect("b's waiter went on a's wheel");
        stop.cancel();
        ticker.await.unwrap();
        assert!(
            LOCAL.with(|local| local.borrow().is_none()),
            "the thread still names a wheel no task turns"
        );
    }

    #[test]
    fn wake_all_wakes_every_slot() {
        let wheel = Wheel::default();
        let ms = millis(MAX);
        let mut waiters: Vec<_> = (0..SLOTS)
            .map(|i| Box::pin(wheel.waiter(i * ms, 0)))
            .collect();
        wheel.wake_all();
        assert!(waiters.iter_mut().all(|w| woken(&mut w.as_mut())));
    }
}
