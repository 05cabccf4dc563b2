//! The state file: the last applied list of discovered upstreams, so a
//! restart while the API is unreachable starts from what the cluster said
//! last rather than from the seed. Written atomically (a temporary file
//! created with `O_EXCL` under a random name, fsync, rename, fsync of the
//! directory), so a symlink planted in the directory is never followed.
//! Read only if it is a regular file (not through a symlink, never a FIFO
//! that would block) of at most [`MAX_BYTES`], on a thread of its own with
//! a deadline ([`read_within`]), so start-up never waits on it. A corrupt
//! file or one written for another Service is ignored with a warning.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `namespace/name` of the Service the list came from.
    pub service: String,
    pub addresses: Vec<String>,
    /// RFC 3339, UTC.
    pub written_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not write the state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What start-up finds.
#[derive(Debug, PartialEq)]
pub enum Loaded {
    Missing,
    /// Valid and for this Service.
    Found(StateFile),
    /// Present but unusable; the reason is logged as a warning.
    Ignored(String),
}

/// The largest state file read. A full ring's 128 addresses take about
/// 5 kB; anything near this is not a file cplb wrote.
pub const MAX_BYTES: u64 = 1 << 20;

/// How long start-up (or a reload) waits for the state file: a hung
/// volume must not hold the proxy, which then starts from the seeds.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `path` for `service` on a thread of its own, at most `timeout`.
/// The thread is detached: if the read hangs (a dead network volume), it
/// is left behind rather than waited for, and exiting does not wait for
/// it either (a runtime's blocking pool would).
pub async fn read_within(path: &Path, service: &str, timeout: Duration) -> Loaded {
    let (p, s) = (path.to_owned(), service.to_owned());
    in_thread(path, timeout, move || read(&p, &s)).await
}

async fn in_thread(
    path: &Path,
    timeout: Duration,
    f: impl FnOnce() -> Loaded + Send + 'static,
) -> Loaded {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("cplb-state-file".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return ignored(path, format!("no thread to read it: {e}"));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(_)) => ignored(path, "its reader ended without an answer".into()),
        Err(_) => ignored(
            path,
            format!(
                "not read within {} (a hung volume?); starting without it",
                humantime::format_duration(timeout)
            ),
        ),
    }
}

/// Reads `path` for `service`. Never fails: anything unusable is
/// `Ignored` with the reason, logged once as a warning. Blocking, but it
/// cannot block on the file's kind: only a regular file is read.
pub fn read(path: &Path, service: &str) -> Loaded {
    let text = match read_regular(path) {
        Ok(Some(t)) => t,
        Ok(None) => return Loaded::Missing,
        Err(reason) => return ignored(path, reason),
    };
    let state: StateFile = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => return ignored(path, format!("not a valid state file: {e}")),
    };
    if state.service != service {
        return ignored(
            path,
            format!(
                "written for the service '{}', not '{service}'",
                state.service
            ),
        );
    }
    if state.addresses.is_empty() {
        return ignored(path, "lists no address".into());
    }
    if let Some(bad) = state
        .addresses
        .iter()
        .find(|a| a.parse::<SocketAddr>().is_err())
    {
        return ignored(path, format!("'{bad}' is not an ip:port address"));
    }
    Loaded::Found(state)
}

/// The bytes of the regular file at `path` (`None`: there is none), or
/// why it is not read. `O_NOFOLLOW`: a symlink there is refused, not
/// followed. `O_NONBLOCK`: opening a FIFO returns at once (without it,
/// `open` waits for a writer, forever), and the type check refuses it.
fn read_regular(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("it is a symbolic link; only a regular file is read".into());
        }
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let meta = f.metadata().map_err(|e| format!("unreadable: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!("it is {what}, not a regular file"));
    }
    let too_big = |n: u64| {
        format!("it is {n} bytes, more than the {MAX_BYTES} bytes (1 MiB) a state file may have")
    };
    if meta.len() > MAX_BYTES {
        return Err(too_big(meta.len()));
    }
    // The file may grow after the look at its size: read one byte past
    // the cap at most.
    let mut text = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("unreadable: {e}"))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(too_big(text.len() as u64));
    }
    Ok(Some(text))
}

fn ignored(path: &Path, reason: String) -> Loaded {
    tracing::warn!(
        state_file = %path.display(),
        reason = reason.as_str(),
        "ignoring the discovery state file"
    );
    Loaded::Ignored(reason)
}

/// Writes the list for `service` atomically. A failure is returned for the
/// caller to log and count; the previous file, if any, stays intact.
pub fn write(path: &Path, service: &str, addresses: &[String]) -> Result<(), StateError> {
    let state = StateFile {
        service: service.into(),
        addresses: addresses.to_vec(),
        written_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(&state).map_err(|e| err(e.into()))?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let written = (|| {
        // A random name created with O_EXCL: nothing planted in the
        // directory (a symlink at a guessable name) is opened or followed.
        // Dropped on any error below, the temporary file is removed.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)?;
        tmp.write_all(&text)?;
        // The data must be on disk before the rename makes it the file.
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        // And the rename itself must survive a power loss.
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(err)
}

/// What `cplb --check` asks of the state file: that this user can create
/// a file in its directory, as `write` does (a file made and removed).
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".cplb-check.")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|source| StateError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cplb-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let p = dir("rt").join("upstreams.json");
        assert_eq!(read(&p, "default/kubernetes"), Loaded::Missing);
        let addrs = vec!["10.0.0.1:6443".to_string(), "[fd00::1]:6443".to_string()];
        write(&p, "default/kubernetes", &addrs).unwrap();
        let Loaded::Found(s) = read(&p, "default/kubernetes") else {
            panic!("not read back: {}", std::fs::read_to_string(&p).unwrap());
        };
        assert_eq!(s.addresses, addrs);
        assert!(
            humantime::parse_rfc3339(&s.written_at).is_ok(),
            "{}",
            s.written_at
        );
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn corrupt_other_service_and_bad_addresses_are_ignored() {
        let p = dir("bad").join("upstreams.json");
        std::fs::write(&p, "{\"service\": \"default/kuber").unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("not a valid"))
        );
        write(&p, "kube-system/other", &["10.0.0.1:6443".into()]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("kube-system/other"))
        );
        write(&p, "default/kubernetes", &["master-1:6443".into()]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("master-1:6443"))
        );
        write(&p, "default/kubernetes", &[]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("no address"))
        );
    }

    #[test]
    fn a_failed_write_is_an_error_naming_the_file_and_keeps_the_old_one() {
        let d = dir("fail");
        let p = d.join("upstreams.json");
        write(&p, "default/kubernetes", &["10.0.0.1:6443".into()]).unwrap();
        // A directory in the way of the temporary file's rename target.
        let blocked = d.join("sub");
        std::fs::create_dir_all(blocked.join("upstreams.json")).unwrap();
        let e = write(
            &blocked.join("upstreams.json"),
            "default/kubernetes",
            &["10.0.0.2:6443".into()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("upstreams.json"), "{e}");
        assert!(matches!(read(&p, "default/kubernetes"), Loaded::Found(_)));
        let missing = d.join("no-such-dir/upstreams.json");
        assert!(write(&missing, "default/kubernetes", &["10.0.0.1:6443".into()]).is_err());
    }

    /// Reads on a thread of the test's own, so a read that blocks fails
    /// the test instead of hanging it.
    fn read_or_hang(p: &Path) -> Loaded {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = p.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(read(&p, "default/kubernetes"));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("reading the state file blocked")
    }

    #[test]
    fn only_a_regular_file_within_the_cap_is_read() {
        let d = dir("kinds");
        let p = d.join("upstreams.json");
        // A FIFO: a plain open() waits for a writer forever.
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            matches!(read_or_hang(&p), Loaded::Ignored(r) if r.contains("a FIFO, not a regular file"))
        );
        std::fs::remove_file(&p).unwrap();
        // A symlink to a valid file is refused, not followed.
        let real = d.join("real.json");
        write(&real, "default/kubernetes", &["10.0.0.1:6443".into()]).unwrap();
        std::os::unix::fs::symlink(&real, &p).unwrap();
        assert!(matches!(read_or_hang(&p), Loaded::Ignored(r) if r.contains("symbolic link")));
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert!(matches!(read_or_hang(&p), Loaded::Ignored(r) if r.contains("a directory")));
        std::fs::remove_dir(&p).unwrap();
        // 1 GiB (sparse): refused by its size, nothing read.
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 30).unwrap();
        let Loaded::Ignored(r) = read_or_hang(&p) else {
            panic!("a 1 GiB file was read");
        };
        assert!(r.contains("1073741824 bytes") && r.contains("1 MiB"), "{r}");
        // Just under the cap is read (and here refused as not JSON).
        f.set_len(MAX_BYTES).unwrap();
        assert!(matches!(read_or_hang(&p), Loaded::Ignored(r) if r.contains("not a valid")));
    }

    #[test]
    fn a_symlink_at_the_old_temporary_name_is_not_followed() {
        let d = dir("symlink");
        let p = d.join("upstreams.json");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The name the temporary file used to have: predictable from the pid.
        let old_tmp = d.join(format!(".upstreams.json.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        write(&p, "default/kubernetes", &["10.0.0.1:6443".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(matches!(read(&p, "default/kubernetes"), Loaded::Found(_)));
        assert!(old_tmp.is_symlink(), "the planted link is left alone");
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && !n.contains(&std::process::id().to_string()))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[tokio::test]
    async fn a_read_that_hangs_is_given_up_after_the_timeout() {
        let (_hold, hang) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let got = in_thread(
            Path::new("/hung/volume/upstreams.json"),
            Duration::from_millis(200),
            move || {
                let _ = hang.recv();
                Loaded::Missing
            },
        )
        .await;
        assert!(
            matches!(&got, Loaded::Ignored(r) if r.contains("not read within 200ms")),
            "{got:?}"
        );
        eprintln!("gave up after {:?}", started.elapsed());
    }
}
