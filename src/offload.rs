//! Blocking reads off the control-plane runtime. The config file, the
//! certificate files and `/proc` live on file systems that can hang (an
//! NFS or FUSE volume, a FIFO where a file was expected); the control
//! plane is one thread that also answers `/healthz` and runs the probes,
//! so a read that blocks there stalls all of it. Each read here runs on a
//! thread of its own and is waited for asynchronously, for a bounded time.
//!
//! A read that overstays is given up on, not cancelled (nothing can cancel
//! a thread blocked in the kernel): its thread is left to finish, and until
//! it does the same `Offload` refuses to start another, so a hung volume
//! costs one thread, not one per reload. A panic in the read is raised
//! again in the caller, where the task's supervisor sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum Stalled {
    #[error(
        "no answer within {}: the file system may hang (the read goes on in the background)",
        humantime::format_duration(*.0)
    )]
    TimedOut(Duration),
    #[error(
        "an earlier read has not returned after {}: the file system may hang",
        humantime::format_duration(*.0)
    )]
    Busy(Duration),
    #[error("could not start a thread for the read")]
    Spawn(#[source] std::io::Error),
}

/// One caller's reads, one at a time.
pub(crate) struct Offload {
    limit: Duration,
    /// The read given up on: set to true by its thread when it returns.
    overdue: Option<(Arc<AtomicBool>, Instant)>,
}

impl Offload {
    pub(crate) fn new(limit: Duration) -> Offload {
        Offload {
            limit,
            overdue: None,
        }
    }

    /// Runs `read` on a thread of its own and waits for it, at most the
    /// limit.
    pub(crate) async fn run<T: Send + 'static>(
        &mut self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stalled> {
        if let Some((done, since)) = &self.overdue {
            if !done.load(Ordering::Acquire) {
                // It started a limit before it was given up on.
                let age = self.limit + since.elapsed();
                return Err(Stalled::Busy(Duration::from_secs(age.as_secs())));
            }
            self.overdue = None;
        }
        let (tx, rx) = oneshot::channel();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        std::thread::Builder::new()
            .name("cplb-read".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
                let _ = tx.send(r);
                finished.store(true, Ordering::Release);
            })
            .map_err(Stalled::Spawn)?;
        match tokio::time::timeout(self.limit, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            // The thread always sends before it ends; a dropped sender
            // means it was killed with the process.
            Ok(Err(_)) => Err(Stalled::TimedOut(self.limit)),
            Err(_) => {
                self.overdue = Some((done, Instant::now()));
                Err(Stalled::TimedOut(self.limit))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn a_read_runs_off_the_caller_thread_and_returns_its_value() {
        let mut o = Offload::new(Duration::from_secs(10));
        let here = std::thread::current().id();
        let there = o.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(here, there);
        assert_eq!(o.run(|| 7).await.unwrap(), 7);
    }

    /// A read that hangs is given up on after the limit, and no second read
    /// starts while it still hangs; once it returns, reads run again.
    #[tokio::test]
    async fn a_hung_read_times_out_and_blocks_the_next_until_it_returns() {
        let mut o = Offload::new(Duration::from_millis(100));
        let (release, hung) = mpsc::channel::<()>();
        let e = o.run(move || hung.recv()).await.unwrap_err();
        assert!(matches!(e, Stalled::TimedOut(_)), "{e}");
        println!("{e}");
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let e = o.run(move || s.store(true, Ordering::SeqCst)).await;
        assert!(matches!(e, Err(Stalled::Busy(_))), "{e:?}");
        assert!(!started.load(Ordering::SeqCst), "a second read started");
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match o.run(|| 1).await {
                Ok(v) => break assert_eq!(v, 1),
                Err(Stalled::Busy(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_read_is_raised_in_the_caller() {
        let mut o = Offload::new(Duration::from_secs(10));
        let r = tokio::spawn(async move { o.run(|| panic!("read exploded")).await }).await;
        let p = r.unwrap_err().into_panic();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"read exploded"));
    }
}
