//! Watches the config file's *directory* (not the file), so every way a
//! file gets replaced is seen: an in-place write, an editor's
//! write-and-rename, a delete and re-create, and the kubelet's ConfigMap
//! swap (`cplb.yaml -> ..data/cplb.yaml`, with `..data` a symlink that is
//! atomically renamed over). Events only *trigger* a reload; the reloader
//! compares content, so noise costs a file read, never a reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reload::ReloadHandle;

const RETRY: Duration = Duration::from_secs(2);

/// Runs until `stop`. If the watcher cannot start or fails (inotify limits,
/// the directory removed), SIGHUP keeps working and the watcher is retried.
pub(crate) async fn run(path: PathBuf, handle: ReloadHandle, stop: CancellationToken) {
    let mut failing = false;
    loop {
        // Recomputed each time: a ConfigMap swap moves the symlink target.
        let dirs = watched_dirs(&path);
        let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Failure>();
        let names = relevant_names(&path);
        match start(&dirs, names, handle.clone(), err_tx) {
            Ok(watcher) => {
                if failing {
                    tracing::info!(dirs = ?crate::logfmt::Json(&dirs), "config watcher running again");
                }
                // Whatever changed before the watch began (at start-up, or
                // while it was down) is picked up now; unchanged content is a no-op.
                handle.file_changed();
                tracing::debug!(dirs = ?crate::logfmt::Json(&dirs), "watching config directory");
                let failure = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = err_rx.recv() => r.unwrap_or(Failure::Fatal("watcher ended".into())),
                };
                drop(watcher);
                match failure {
                    // The old target of a swapped symlink went away: re-arm now.
                    Failure::TargetMoved => {
                        tracing::info!(
                            config = %path.display(),
                            "the config's directory was swapped (a ConfigMap update); watching the new one"
                        );
                        continue;
                    }
                    Failure::Fatal(reason) => {
                        tracing::warn!(error = %reason, "config watcher failed; SIGHUP still reloads; retrying");
                        failing = true;
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, dirs = ?crate::logfmt::Json(&dirs), "could not watch the config directory; SIGHUP still reloads; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// File names whose events matter: the config's own, and its final
/// symlink target's.
fn relevant_names(path: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<std::ffi::OsString> =
        path.file_name().map(|n| n.to_owned()).into_iter().collect();
    if let Some(n) = std::fs::canonicalize(path)
        .ok()
        .and_then(|r| r.file_name().map(|n| n.to_owned()))
        && !names.contains(&n)
    {
        names.push(n);
    }
    names
}

/// The file's directory, and the directory of its final target when the
/// path is a symlink elsewhere.
fn watched_dirs(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Whether an event on `paths` can change the config's content.
fn is_relevant(paths: &[PathBuf], watched: &[PathBuf], names: &[std::ffi::OsString]) -> bool {
    paths.iter().any(|p| {
        watched.contains(p)
            || p.file_name().is_some_and(|n| {
                names.iter().any(|m| m == n) || n.to_string_lossy().starts_with("..")
            })
    })
}

enum Failure {
    /// The symlink target's directory was removed (a ConfigMap swap).
    TargetMoved,
    Fatal(String),
}

/// Watches `dirs[0]` (required) and the rest (best effort).
fn start(
    dirs: &[PathBuf],
    names: Vec<std::ffi::OsString>,
    handle: ReloadHandle,
    errors: mpsc::UnboundedSender<Failure>,
) -> notify::Result<notify::RecommendedWatcher> {
    let primary = dirs[0].clone();
    let watched: Vec<PathBuf> = dirs.to_vec();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                // Reads (ours included) are not changes.
                if let EventKind::Access(a) = ev.kind
                    && a != notify::event::AccessKind::Close(notify::event::AccessMode::Write)
                {
                    return;
                }
                // Only what can change the config's content: its own name,
                // the symlink target's name, the ConfigMap's `..data`
                // entries. A log file or editor swap file beside it is noise.
                if is_relevant(&ev.paths, &watched, &names) {
                    handle.file_changed();
                }
                // A watched directory itself went away: that watch is dead.
                if matches!(ev.kind, EventKind::Remove(_))
                    && ev.paths.iter().any(|p| watched.contains(p))
                {
                    let f = if ev.paths.contains(&primary) {
                        Failure::Fatal("the config directory was removed".into())
                    } else {
                        Failure::TargetMoved
                    };
                    let _ = errors.send(f);
                }
            }
            Err(e) => {
                let _ = errors.send(Failure::Fatal(e.to_string()));
            }
        })?;
    watcher.watch(&dirs[0], RecursiveMode::NonRecursive)?;
    for d in &dirs[1..] {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %d.display(), error = %e, "could not watch the config's symlink target directory");
        }
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::fs::symlink;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cplb-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::canonicalize(d).unwrap()
    }

    fn names(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn plain_file_watches_its_directory_for_its_name() {
        let d = temp("plain");
        let f = d.join("cplb.yaml");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(watched_dirs(&f), vec![d.clone()]);
        assert_eq!(relevant_names(&f), names(&["cplb.yaml"]));
        // A missing file (deleted, about to be re-created) still names itself.
        let gone = d.join("gone.yaml");
        assert_eq!(watched_dirs(&gone), vec![d.clone()]);
        assert_eq!(relevant_names(&gone), names(&["gone.yaml"]));
        // A bare file name lives in the current directory.
        assert_eq!(
            watched_dirs(Path::new("cplb.yaml")),
            vec![PathBuf::from(".")]
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn symlink_elsewhere_adds_the_target_directory_and_name() {
        let d = temp("link");
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("store")).unwrap();
        std::fs::write(d.join("store/real.yaml"), "x").unwrap();
        let f = d.join("etc/cplb.yaml");
        symlink("../store/real.yaml", &f).unwrap();
        assert_eq!(watched_dirs(&f), vec![d.join("etc"), d.join("store")]);
        assert_eq!(relevant_names(&f), names(&["cplb.yaml", "real.yaml"]));
        // A symlink within the same directory: one directory, two names.
        let g = d.join("store/cplb.yaml");
        symlink("real.yaml", &g).unwrap();
        assert_eq!(watched_dirs(&g), vec![d.join("store")]);
        assert_eq!(relevant_names(&g), names(&["cplb.yaml", "real.yaml"]));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn configmap_layout_watches_the_timestamped_directory_once() {
        let d = temp("cm");
        std::fs::create_dir_all(d.join("..2026_01_01.1")).unwrap();
        std::fs::write(d.join("..2026_01_01.1/cplb.yaml"), "x").unwrap();
        symlink("..2026_01_01.1", d.join("..data")).unwrap();
        let f = d.join("cplb.yaml");
        symlink("..data/cplb.yaml", &f).unwrap();
        assert_eq!(watched_dirs(&f), vec![d.clone(), d.join("..2026_01_01.1")]);
        // The target has the same name: listed once.
        assert_eq!(relevant_names(&f), names(&["cplb.yaml"]));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn only_the_config_its_target_and_configmap_entries_are_relevant() {
        let dir = PathBuf::from("/etc/cplb");
        let watched = vec![dir.clone()];
        let n = names(&["cplb.yaml", "real.yaml"]);
        let rel = |p: &str| is_relevant(&[PathBuf::from(p)], &watched, &n);
        assert!(rel("/etc/cplb/cplb.yaml"));
        assert!(rel("/elsewhere/real.yaml"));
        assert!(rel("/etc/cplb/..data"));
        assert!(rel("/etc/cplb/..data_tmp"));
        assert!(rel("/etc/cplb"), "the watched directory itself");
        assert!(!rel("/etc/cplb/cplb.log"));
        assert!(!rel("/etc/cplb/.cplb.yaml.swp"));
        assert!(!rel("/etc/cplb/cplb.yaml~"));
        assert!(!rel("/etc/cplb/notes.txt"));
        assert!(!is_relevant(&[], &watched, &n));
        // A rename event carries both paths: relevant if either is.
        assert!(is_relevant(
            &[
                PathBuf::from("/etc/cplb/.cplb.yaml.swp"),
                PathBuf::from("/etc/cplb/cplb.yaml")
            ],
            &watched,
            &n
        ));
    }
}
