//! Supervision of the control-plane tasks. tokio catches a task's panic
//! and hands it to whoever awaits the task's handle; a task spawned with
//! its handle dropped would die silently, and with it config reloads, the
//! admin endpoint or fail-back. Every control-plane task is spawned
//! through here instead: a panic is logged (the task's name and the panic
//! message), counted in `cplb_task_panics_total{task}`, and then, by the
//! task's policy, the task restarts after a backoff, or `/healthz` fails
//! so that the kubelet (or the operator) restarts cplb.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A control-plane task, by what it does. The name is the `task` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// The admin endpoint's accept loop (and, counted under the same
    /// label, each admin connection).
    Admin,
    /// The config file watcher.
    Watch,
    /// The reloader: reloads, discovery's updates, the probers' lifecycle.
    Reloader,
    /// The fail-back driver.
    Failback,
    /// SIGHUP to reload.
    Sighup,
    /// Keeps the kernel data plane's maps in step (kernel mode only).
    Dataplane,
}

impl Task {
    pub(crate) const ALL: [Task; 6] = [
        Task::Admin,
        Task::Watch,
        Task::Reloader,
        Task::Failback,
        Task::Sighup,
        Task::Dataplane,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Task::Admin => "admin",
            Task::Watch => "watch",
            Task::Reloader => "reloader",
            Task::Failback => "failback",
            Task::Sighup => "sighup",
            Task::Dataplane => "dataplane",
        }
    }

    /// What stops working when a task that is not restarted is gone.
    fn lost(self) -> &'static str {
        match self {
            Task::Reloader => {
                "config reloads, SIGHUP, discovery updates and active health checks have stopped"
            }
            _ => "it is not running",
        }
    }
}

/// What a task's panic leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Start it again after a backoff: its state is rebuilt from the
    /// shared snapshot, so a fresh start loses nothing that matters.
    Restart,
    /// `/healthz` fails: its state (the running config, the upstream state
    /// table, the probers, discovery) cannot be rebuilt in place, so the
    /// process must restart.
    Unhealthy,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Also how long a run must last for the backoff to start over.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A task that panicked and was not restarted: why `/healthz` fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) task: &'static str,
    pub(crate) panic: String,
    pub(crate) lost: &'static str,
}

/// Spawns and watches the control-plane tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Supervisor {
    panics: IntCounterVec,
    failed: Arc<Mutex<Vec<Failure>>>,
}

impl Supervisor {
    /// Registers `cplb_task_panics_total`, every task's series at 0.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Supervisor> {
        let panics = IntCounterVec::new(
            Opts::new(
                "cplb_task_panics_total",
                "Panics of cplb's control-plane tasks, by task. Each is logged; admin, watch, failback, sighup and dataplane restart, a reloader panic fails /healthz.",
            ),
            &["task"],
        )?;
        registry.register(Box::new(panics.clone()))?;
        for t in Task::ALL {
            panics.with_label_values(&[t.name()]);
        }
        Ok(Supervisor {
            panics,
            failed: Arc::default(),
        })
    }

    /// The tasks that panicked and were not restarted, for `/healthz`.
    pub(crate) fn failures(&self) -> Vec<Failure> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the task `make` builds; after a panic, logs, counts, waits a
    /// backoff (100 ms doubling to 30 s, from 100 ms again after a run of
    /// 30 s) and runs a new one, until it returns or `stop`.
    pub(crate) fn restarting<F, Fut>(&self, task: Task, stop: CancellationToken, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(task, Policy::Restart, stop, move || Some(make()));
    }

    /// Runs `fut`; a panic fails `/healthz` for good.
    pub(crate) fn vital<Fut>(&self, task: Task, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut once = Some(fut);
        let never = CancellationToken::new();
        self.spawn(task, Policy::Unhealthy, never, move || once.take());
    }

    /// A panic caught by the caller (one admin connection): logged and
    /// counted under `task`; the caller goes on.
    pub(crate) fn caught(&self, task: Task, payload: &(dyn std::any::Any + Send)) {
        let panic = message(payload);
        self.panics.with_label_values(&[task.name()]).inc();
        tracing::error!(
            task = task.name(),
            panic = %panic,
            "control-plane task panicked; that one request's connection is closed"
        );
    }

    fn spawn<F, Fut>(&self, task: Task, policy: Policy, stop: CancellationToken, mut make: F)
    where
        F: FnMut() -> Option<Fut> + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                let Some(fut) = make() else {
                    return;
                };
                let started = Instant::now();
                let run = tokio::spawn(async move {
                    fault::hit(task);
                    fut.await
                });
                let payload = match run.await {
                    Ok(()) => return,
                    Err(e) => match e.try_into_panic() {
                        Ok(p) => p,
                        // Cancelled: the runtime is shutting down.
                        Err(_) => return,
                    },
                };
                let panic = message(&*payload);
                this.panics.with_label_values(&[task.name()]).inc();
                match policy {
                    Policy::Restart => {
                        if started.elapsed() >= BACKOFF_MAX {
                            backoff = BACKOFF_MIN;
                        }
                        tracing::error!(
                            task = task.name(),
                            panic = %panic,
                            restart_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                            "control-plane task panicked; restarting it"
                        );
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Policy::Unhealthy => {
                        tracing::error!(
                            task = task.name(),
                            panic = %panic,
                            lost = task.lost(),
                            "control-plane task panicked; /healthz now fails so that cplb is restarted"
                        );
                        this.failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Failure {
                                task: task.name(),
                                panic,
                                lost: task.lost(),
                            });
                        return;
                    }
                }
            }
        });
    }
}

/// The text of a panic: `panic!` makes a `&str` or a `String`.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// A panic injected at a task's start, for tests on this thread only (a
/// current-thread runtime runs every control-plane task on its thread).
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::RefCell;

    use super::Task;

    thread_local! {
        static ARMED: RefCell<Vec<Task>> = const { RefCell::new(Vec::new()) };
    }

    /// The next start of `task` on this thread panics, once.
    pub(crate) fn arm(task: Task) {
        ARMED.with(|a| a.borrow_mut().push(task));
    }

    pub(super) fn hit(task: Task) {
        let armed = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            let at = a.iter().position(|t| *t == task);
            at.map(|i| a.remove(i)).is_some()
        });
        if armed {
            panic!("injected fault in the {} task", task.name());
        }
    }
}

#[cfg(not(test))]
mod fault {
    #[inline(always)]
    pub(super) fn hit(_: super::Task) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logfmt::tests::Logs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn panics(s: &Supervisor, task: Task) -> u64 {
        s.panics.with_label_values(&[task.name()]).get()
    }

    /// A task that panics twice is logged and counted each time, with its
    /// name and message, and restarted after 100 then 200 ms.
    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_is_logged_counted_and_started_again() {
        let (_g, logs) = Logs::capture();
        let s = Supervisor::new(&Registry::new()).unwrap();
        for t in Task::ALL {
            assert_eq!(panics(&s, t), 0, "{} at 0 from the start", t.name());
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (r, st) = (runs.clone(), stop.clone());
        let started = Instant::now();
        s.restarting(Task::Watch, stop.clone(), move || {
            let (r, st) = (r.clone(), st.clone());
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= 2 {
                    panic!("boom {n}");
                }
                st.cancelled().await;
            }
        });
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not run a third time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("third run after {:?} (paused clock)", started.elapsed());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(panics(&s, Task::Watch), 2);
        let lines = logs.lines("control-plane task panicked; restarting it");
        println!("{}", lines.join("\n"));
        assert_eq!(lines.len(), 2);
        for (i, (l, ms)) in lines.iter().zip([100, 200]).enumerate() {
            assert!(
                l.contains("ERROR")
                    && l.contains("task=\"watch\"")
                    && l.contains(&format!("panic=boom {}", i + 1))
                    && l.contains(&format!("restart_in_ms={ms}")),
                "{l}"
            );
        }
        assert!(s.failures().is_empty(), "a restarted task fails nothing");
        stop.cancel();
    }

    /// A vital task's panic fails `/healthz` for good.
    #[tokio::test]
    async fn a_vital_task_fails_health() {
        let (_g, logs) = Logs::capture();
        let s = Supervisor::new(&Registry::new()).unwrap();
        s.vital(Task::Reloader, async {
            panic!("{}", String::from("ring bound"))
        });
        let end = Instant::now() + Duration::from_secs(10);
        while panics(&s, Task::Reloader) < 1 || s.failures().is_empty() {
            assert!(Instant::now() < end, "panics not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            s.failures(),
            vec![Failure {
                task: "reloader",
                panic: "ring bound".into(),
                lost: Task::Reloader.lost(),
            }]
        );
        let vital = logs.lines("/healthz now fails");
        println!("{}", vital.join("\n"));
        assert!(
            vital.len() == 1
                && vital[0].contains("task=\"reloader\"")
                && vital[0].contains("panic=ring bound")
        );
    }

    #[test]
    fn the_fault_fires_once_for_its_task_on_its_thread() {
        fault::arm(Task::Watch);
        fault::hit(Task::Admin);
        let other = std::thread::spawn(|| fault::hit(Task::Watch));
        assert!(other.join().is_ok(), "armed on another thread");
        assert!(std::panic::catch_unwind(|| fault::hit(Task::Watch)).is_err());
        fault::hit(Task::Watch);
    }
}
