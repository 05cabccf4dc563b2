//! The `cplb` binary as a child process, with its log lines collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::DEADLINE;

pub struct CplbProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// Collects stderr until EOF; joined on exit so that every line the
    /// process wrote is in `logs` before anyone counts them.
    reader: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Options {
    /// RLIMIT_NOFILE for the child.
    pub nofile: Option<u64>,
    pub args: Vec<String>,
    /// `RUST_LOG` for the child; `info` when `None`.
    pub log_filter: Option<String>,
    /// Another `cplb` binary (e.g. the release build); this crate's own
    /// when `None`.
    pub binary: Option<PathBuf>,
    /// Runs the child as this uid (and gid), with no supplementary groups;
    /// needs root.
    pub uid: Option<u32>,
    /// More environment variables for the child.
    pub env: Vec<(String, String)>,
}

/// A fresh temp directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("cplb-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl CplbProcess {
    pub fn spawn(yaml: &str, opts: Options) -> CplbProcess {
        let dir = temp_dir("proc");
        let config_path = dir.join("cplb.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        Self::spawn_with_file(config_path, opts)
    }

    pub fn spawn_with_file(config_path: PathBuf, opts: Options) -> CplbProcess {
        let bin = opts
            .binary
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cplb").into());
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config_path).args(&opts.args);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", opts.log_filter.as_deref().unwrap_or("info"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(uid) = opts.uid {
            use std::os::unix::process::CommandExt;
            // SAFETY: setgroups, setgid and setuid are async-signal-safe;
            // nothing else runs between fork and exec here.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn cplb");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let l = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                l.lock().unwrap().push(line);
            }
        });
        let mut p = CplbProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            config_path,
            logs,
            reader: Some(reader),
        };
        let line = p.wait_for_log("cplb started");
        if line.starts_with('{') {
            // --log-format json
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let f = &v["fields"];
            p.addr = f["listen"][0].as_str().unwrap().parse().unwrap();
            // An address, or "disabled".
            p.admin = f["admin"].as_str().and_then(|a| a.parse().ok());
            return p;
        }
        p.addr = field(&line, "listen=[")
            .split(',')
            .next()
            .unwrap()
            .trim_end_matches(']')
            .trim_matches('"')
            .parse()
            .unwrap();
        // An address, or "disabled".
        p.admin = field(&line, "admin=").parse().ok();
        p
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_within(needle, DEADLINE)
    }

    /// `wait_for_log` for a line logged on a timer of the process's own.
    pub fn wait_for_log_within(&mut self, needle: &str, deadline: Duration) -> String {
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "cplb exited ({status}) before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                std::time::Instant::now() < end,
                "no log line {needle:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_for_count(&mut self, needle: &str, n: usize) {
        let end = std::time::Instant::now() + DEADLINE;
        while self.count_logs(needle) < n {
            assert!(
                std::time::Instant::now() < end,
                "fewer than {n} log lines {needle:?}:\n{}",
                self.logs()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cplb exited ({status}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped (Drop reaps it).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let Some(status) = wait_child(&mut self.child, DEADLINE * 4) else {
            panic!("cplb did not exit:\n{}", self.logs());
        };
        // The child is gone, so its stderr reaches EOF: wait for the reader
        // to take in the last lines.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status.code()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for CplbProcess {
    fn drop(&mut self) {
        // A failing test shows whether cplb was still running, and what it
        // logged last: a closed connection alone does not say which.
        if std::thread::panicking() {
            let status = self.child.try_wait();
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!(
                "cplb (pid {}) at the test's failure: {}; its last log lines:",
                self.child.id(),
                match status {
                    Ok(Some(s)) => format!("exited, {s}"),
                    Ok(None) => "running".to_string(),
                    Err(e) => format!("unknown ({e})"),
                }
            );
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len();
    line[start..].split(' ').next().unwrap()
}

/// Waits until `child` exits, at most `deadline`: its status, or None
/// after killing and reaping it. Blocks on a pidfd, which becomes readable
/// when the process exits, so nothing polls `try_wait` in a loop.
pub fn wait_child(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // the pid is our unreaped child, so it cannot have been reused.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: the fd was just returned by pidfd_open and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a sub-millisecond remainder still waits.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Some(child.wait().unwrap());
        }
        let err = std::io::Error::last_os_error();
        if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        assert!(n == 0, "poll on pidfd: {err}");
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    }
}
