//! A private network namespace for a test: loopback up, the given sysctls
//! set inside it only, so the host's settings are left alone and tests do
//! not disturb each other.

use std::future::Future;
use std::process::Command;

use super::require;

/// Runs `f` on a runtime inside a fresh network namespace, after writing
/// each `(path under /proc/sys/net, value)` and reading it back. Threads
/// and child processes started from `f` inherit the namespace. `None`
/// (skipped, or a failure in CI) without root or `ip`.
pub fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
    test: &str,
    sysctls: &'static [(&'static str, &'static str)],
    f: impl FnOnce() -> F + Send + 'static,
) -> Option<T> {
    if !require::root(
        test,
        "unshare(CLONE_NEWNET) for a private network namespace",
    ) || !require::tool(test, "ip", "iproute2")
    {
        return None;
    }
    let out = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread; the runtime's threads
        // and child processes started from here inherit the namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "ip link set lo up");
        // /proc/sys/net is this thread's namespace.
        for (knob, value) in sysctls {
            let path = format!("/proc/sys/net/{knob}");
            std::fs::write(&path, value).unwrap();
            let now = std::fs::read_to_string(&path).unwrap();
            assert_eq!(now.trim(), *value, "{path}");
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap();
    Some(out)
}
