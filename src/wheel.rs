//! Where a proxied connection waits, besides its sockets: a timing wheel of
//! `Notify` slots, one per upstream and worker thread. A connection waits
//! on one slot of its upstream's wheel on its worker, the one of the tick
//! when it next has to look at its idleness (`copy::idle`). Each worker's
//! ticker (`Timers::run`, on the worker's own runtime) turns all of that
//! worker's wheels, one slot per tick.
//!
//! The same waiter carries the events that end a connection, so each
//! reaches only the connections it concerns:
//! - an upstream's eviction or removal wakes that upstream's wheels
//!   (`UpstreamWheels::wake_all`), on every worker, and no other;
//! - the end of the shutdown drain wakes every wheel (`Timers::wake_all`).
//!
//! The woken connection asks `proxy` why it woke (`proxy::Wake`): a tick, an
//! eviction, a removal or the drain's end.
//!
//! Why not a tokio `Sleep` per connection: it is 112 bytes, a third of a
//! connection's task, and every open connection holds its task for its
//! whole life. A waiter on a slot is the 64 bytes the connection spends on
//! events anyway. Why a wheel, not one signal for everyone: a sweep that
//! woke every connection every few seconds would cost CPU in proportion to
//! the idle connections; here an idle connection is woken once per tick
//! it asked for (after `KEEPALIVE_AFTER`, then at its timeout, or at the
//! wheel's far end when the timeout lies beyond it). Why per worker: its
//! wake-ups stay on the thread, and its ticker keeps the thread's tokio
//! timer busy (see `tick`).
//!
//! Why a connection can never wait on a wheel that nothing turns: the only
//! way to a waiter is a `Worker`, and the only maker of a `Worker` is
//! `Timers::run`, which turns that worker's wheels for as long as it runs.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;

use crate::clock::millis;

/// Slots in a wheel: with the default `idle_timeout` (tick 5 s) a wheel
/// spans 640 s, past the 600 s timeout.
const SLOTS: u64 = 128;
/// The finest tick: short test timeouts do not turn the wheel into a spin.
const MIN: Duration = Duration::from_millis(10);
/// The coarsest: keepalive is armed within this of `KEEPALIVE_AFTER`, and a
/// connection closes at most this late.
const MAX: Duration = Duration::from_secs(5);

/// The tick for `idle_timeout`: a sixteenth of it (a connection closes at
/// most that late, never early), within `MIN..=MAX`.
///
/// And at most half of the shortest per-connection timer (`timer_floor`:
/// the connect timeout, and the first-byte timeout when hedging is on),
/// for a syscall: tokio writes to its eventfd whenever a new timer is
/// earlier than every timer it has, which each connect's timeout otherwise
/// was (`bench/e2e/syscalls.py`: 0.70 writes per new connection, 0.01 with
/// the ticker's sleep always earlier). This is the one place the two are
/// tied; the tick is otherwise only about idleness.
pub(crate) fn tick(idle_timeout: Duration, timer_floor: Duration) -> Duration {
    (idle_timeout / 16).min(timer_floor / 2).clamp(MIN, MAX)
}

/// One timing wheel: `SLOTS` notifiers, one woken per tick.
struct Wheel {
    slots: Box<[Arc<Notify>]>,
    /// The last tick woken. Stored before its slot is woken: a waiter made
    /// for tick `t` that then reads `fired < t` is sure to be woken by `t`.
    fired: AtomicU64,
    /// Milliseconds per tick now (its worker's ticker sets it).
    tick_ms: AtomicU64,
}

impl Wheel {
    fn new(tick_ms: u64) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Arc::new(Notify::new())).collect(),
            fired: AtomicU64::new(0),
            tick_ms: AtomicU64::new(tick_ms),
        }
    }

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
}

/// Proof that worker `index`'s wheels are being turned: made only by
/// `Timers::run`, for the tasks it starts. Two bytes, kept by every
/// connection to find its wheel again after each wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Worker {
    index: u16,
}

/// The wheels one worker turns.
#[derive(Default)]
struct WorkerWheels {
    /// Registered by the first waiter of an upstream on this worker; the
    /// lock is taken then and by the ticker, never per connection.
    wheels: Mutex<Vec<Weak<Wheel>>>,
    tick_ms: AtomicU64,
}

/// Every worker's wheels, of one proxy.
pub(crate) struct Timers {
    workers: Box<[WorkerWheels]>,
}

impl Timers {
    /// For `workers` worker threads (at least one).
    pub(crate) fn new(workers: usize) -> Arc<Timers> {
        let workers = workers.clamp(1, usize::from(u16::MAX));
        Arc::new(Timers {
            workers: (0..workers)
                .map(|_| WorkerWheels {
                    wheels: Mutex::default(),
                    tick_ms: AtomicU64::new(millis(MAX)),
                })
                .collect(),
        })
    }

    fn worker(&self, w: Worker) -> &WorkerWheels {
        // A `Worker` is made only by `run`, for an index it checked.
        &self.workers[usize::from(w.index)]
    }

    /// Wakes every waiter of every wheel (the end of the shutdown drain).
    pub(crate) fn wake_all(&self) {
        for w in &*self.workers {
            for wheel in lock(&w.wheels).iter().filter_map(Weak::upgrade) {
                wheel.wake_all();
            }
        }
    }

    /// Turns worker `index`'s wheels (modulo the worker count) until
    /// `stop`, at the tick `tick` returns (asked again each tick, so a
    /// reload's values apply from the next one). `start` is called first,
    /// with the `Worker` that lets tasks wait on these wheels: the accept
    /// loops it spawns, and every connection they accept, only ever wait
    /// on wheels that this turns. Run it on the worker's own runtime, so
    /// the wake-ups stay on its thread.
    pub(crate) async fn run(
        self: Arc<Self>,
        index: usize,
        tick: impl Fn() -> Duration,
        stop: CancellationToken,
        start: impl FnOnce(Worker),
    ) {
        let worker = Worker {
            // `new` keeps the count within u16.
            index: (index % self.workers.len()) as u16,
        };
        start(worker);
        let mine = self.worker(worker);
        loop {
            let every = tick();
            let ms = millis(every);
            mine.tick_ms.store(ms, SeqCst);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let mut wheels = lock(&mine.wheels);
            wheels.retain(|w| match w.upgrade() {
                Some(wheel) => {
                    wheel.tick_ms.store(ms, SeqCst);
                    wheel.turn();
                    true
                }
                // Its upstream is gone, and every connection with it.
                None => false,
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One upstream's wheels, one per worker, each made when the first
/// connection of that worker waits on it (with `key: node` a worker's
/// connections all go to one upstream, so most of these stay empty).
pub(crate) struct UpstreamWheels {
    timers: Arc<Timers>,
    per_worker: Box<[OnceLock<Arc<Wheel>>]>,
}

impl UpstreamWheels {
    pub(crate) fn new(timers: Arc<Timers>) -> UpstreamWheels {
        let per_worker = (0..timers.workers.len()).map(|_| OnceLock::new()).collect();
        UpstreamWheels { timers, per_worker }
    }

    /// A waiter on this upstream's wheel of `worker`, woken at the first
    /// tick at or after `due_ms` (`Clock` ms; now is `now_ms`), or by an
    /// event of this upstream or the drain's end.
    pub(crate) fn waiter(&self, worker: Worker, due_ms: u64, now_ms: u64) -> OwnedNotified {
        let wheel = self.per_worker[usize::from(worker.index)].get_or_init(|| {
            let turner = self.timers.worker(worker);
            let wheel = Arc::new(Wheel::new(turner.tick_ms.load(SeqCst)));
            lock(&turner.wheels).push(Arc::downgrade(&wheel));
            wheel
        });
        wheel.waiter(due_ms, now_ms)
    }

    /// Wakes every connection waiting on this upstream's wheels, on every
    /// worker, and no other.
    pub(crate) fn wake_all(&self) {
        for wheel in self.per_worker.iter().filter_map(OnceLock::get) {
            wheel.wake_all();
        }
    }
}

/// Runs `body` with a `Worker` of `timers` whose wheels this test's
/// runtime turns every `tick`, and stops turning them when it returns.
#[cfg(test)]
pub(crate) async fn with_worker<F: std::future::Future>(
    timers: &Arc<Timers>,
    tick: Duration,
    body: impl FnOnce(Worker) -> F,
) -> F::Output {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ticker = tokio::spawn(timers.clone().run(
        0,
        move || tick,
        stop.clone(),
        move |w| {
            let _ = tx.send(w);
        },
    ));
    let worker = rx.await.expect("the ticker starts");
    let out = body(worker).await;
    stop.cancel();
    let _ = ticker.await;
    out
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
        // Shorter than half the shortest per-connection timer.
        assert_eq!(tick(s(3000), s(3)), Duration::from_millis(1_500));
        assert_eq!(tick(s(3000), Duration::from_millis(1)), MIN);
    }

    /// A waiter is woken by the first tick at or after its due time, not
    /// before.
    #[test]
    fn a_waiter_wakes_at_its_tick() {
        let wheel = Wheel::new(millis(MAX));
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
        let wheel = Wheel::new(millis(MAX));
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
        let wheel = Arc::new(Wheel::new(millis(MAX)));
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

    /// A worker's ticker wakes the waiters of its upstreams' wheels at
    /// their tick, and not before.
    #[tokio::test(start_paused = true)]
    async fn a_workers_waiters_are_woken_by_its_own_ticker() {
        let timers = Timers::new(1);
        let up = UpstreamWheels::new(timers.clone());
        with_worker(&timers, MIN, |w| async move {
            let start = tokio::time::Instant::now();
            let due = 3 * millis(MIN) + 5;
            tokio::time::timeout(Duration::from_secs(1), up.waiter(w, due, 0))
                .await
                .expect("not woken: nothing turns the wheel");
            let after = start.elapsed();
            println!("due after {due} ms, woken after {after:?}");
            assert!(after >= Duration::from_millis(due), "woken early");
        })
        .await;
    }

    /// A wheel made after the ticker started (an upstream's first
    /// connection on this worker, or one added by a reload) is turned too.
    #[tokio::test(start_paused = true)]
    async fn a_wheel_made_later_is_turned() {
        let timers = Timers::new(2);
        with_worker(&timers.clone(), MIN, |w| async move {
            tokio::time::sleep(5 * MIN).await;
            let late = UpstreamWheels::new(timers.clone());
            tokio::time::timeout(Duration::from_secs(1), late.waiter(w, 2 * millis(MIN), 0))
                .await
                .expect("a wheel made after the ticker started is never turned");
        })
        .await;
    }

    /// An upstream's events wake its own connections, on every worker, and
    /// no other upstream's.
    #[tokio::test]
    async fn an_upstreams_wake_reaches_only_its_own_waiters() {
        let timers = Timers::new(2);
        let (a, b) = (
            UpstreamWheels::new(timers.clone()),
            UpstreamWheels::new(timers.clone()),
        );
        let hour = Duration::from_secs(3600);
        with_worker(&timers, hour, |w| async move {
            let mut of_a = pin!(a.waiter(w, u64::MAX, 0));
            let mut of_b = pin!(b.waiter(w, u64::MAX, 0));
            b.wake_all();
            assert!(!woken(&mut of_a), "woken by another upstream's event");
            assert!(woken(&mut of_b), "not woken by its own upstream's event");
            a.wake_all();
            assert!(woken(&mut of_a));
        })
        .await;
    }

    /// The drain's end reaches every upstream's waiters on every worker.
    #[tokio::test]
    async fn wake_all_reaches_every_wheel() {
        let timers = Timers::new(1);
        let ups: Vec<_> = (0..3)
            .map(|_| UpstreamWheels::new(timers.clone()))
            .collect();
        with_worker(&timers.clone(), Duration::from_secs(3600), |w| async move {
            let mut waiters: Vec<_> = ups
                .iter()
                .map(|u| Box::pin(u.waiter(w, u64::MAX, 0)))
                .collect();
            timers.wake_all();
            assert!(waiters.iter_mut().all(|w| woken(&mut w.as_mut())));
        })
        .await;
    }

    /// A gone upstream's wheel leaves its worker's list at the next tick.
    #[tokio::test(start_paused = true)]
    async fn a_gone_upstreams_wheel_is_forgotten() {
        let timers = Timers::new(1);
        with_worker(&timers.clone(), MIN, |w| async move {
            let up = UpstreamWheels::new(timers.clone());
            drop(up.waiter(w, 0, 0));
            assert_eq!(lock(&timers.workers[0].wheels).len(), 1);
            drop(up);
            tokio::time::sleep(3 * MIN).await;
            assert!(lock(&timers.workers[0].wheels).is_empty());
        })
        .await;
    }

    #[test]
    fn wake_all_wakes_every_slot() {
        let wheel = Wheel::new(millis(MAX));
        let ms = millis(MAX);
        let mut waiters: Vec<_> = (0..SLOTS)
            .map(|i| Box::pin(wheel.waiter(i * ms, 0)))
            .collect();
        wheel.wake_all();
        assert!(waiters.iter_mut().all(|w| woken(&mut w.as_mut())));
    }
}
