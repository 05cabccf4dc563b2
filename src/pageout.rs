//! Gives back the executable's code and read-only data pages once start-up
//! is over. Start-up (argument and YAML parsing, TLS set-up, the kube
//! client's construction, the first list) touches far more code than an
//! idle proxy runs, and the kernel maps code in 64 kB runs (fault-around)
//! or whole page-cache folios, so most of the binary stays resident for
//! life. These pages are clean and file-backed: paging them out loses
//! nothing, and the few an idle proxy runs fault straight back in from the
//! page cache.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Start-up is over by then: listeners bound, the first probes run, and
/// discovery's first list (which reads its state file at once and has a
/// connect timeout of its own) applied in the usual case. Code that runs
/// later, as a reload does, faults back in and stays.
const AFTER_START_UP: Duration = Duration::from_secs(10);

/// Once per process, `AFTER_START_UP` after start, unless stopped first.
pub(crate) async fn after_start_up(stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(AFTER_START_UP) => {}
    }
    match page_out_executable() {
        Ok(bytes) => tracing::info!(bytes, "paged out the executable's start-up code"),
        // Before Linux 5.4 (no MADV_PAGEOUT), or no /proc: nothing lost.
        Err(e) => tracing::info!(error = %e, "could not page out the executable's start-up code"),
    }
}

/// `MADV_PAGEOUT` on every read-only mapping of our own executable.
/// Returns the bytes advised.
pub(crate) fn page_out_executable() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(path)) = (f.next(), f.next(), f.nth(3)) else {
            continue;
        };
        // Writable mappings (.data, relocated tables) hold our own writes.
        if path != exe || perms.as_bytes().get(1) != Some(&b'-') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let len = end.saturating_sub(start);
        // SAFETY: [start, end) is a whole mapping of this process, read
        // from /proc/self/maps, and it is read-only and file-backed.
        // MADV_PAGEOUT changes no contents: a clean page it drops is read
        // back from the file on the next access, including the page this
        // code runs from.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        advised += len;
    }
    Ok(advised)
}
