//! The data plane's threads: one single-threaded tokio runtime per worker,
//! each driving its own SO_REUSEPORT listener and every connection that
//! listener accepted, like nginx's worker processes. A connection never
//! migrates between threads, so a wake-up is never a cross-thread handoff
//! and copy buffers stay in their thread's pool. The control plane (admin,
//! reload, health checks) runs on the caller's runtime.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub(crate) struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    pub(crate) fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cplb-worker-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
            handles,
            threads,
            stop,
        })
    }

    /// Runs `fut` on worker `i` (modulo the worker count).
    pub(crate) fn spawn<F>(&self, i: usize, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(fut)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            // Joining from inside a runtime would block it; the threads
            // end by themselves once `stop` is seen.
            if Handle::try_current().is_err() {
                let _ = t.join();
            }
        }
    }
}
