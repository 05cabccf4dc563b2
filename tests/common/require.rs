//! Tests that need an external tool or root skip on a user's machine with one
//! line naming what is missing, and fail under `CPLB_TEST_REQUIRE_ALL=1`
//! (set by `.ci/run`), so CI never silently runs less than everything.
//!
//! The skip line is written straight to the process's stderr, not through
//! `eprintln!`, because libtest captures the macros' output of passing tests
//! and a skip must show in a plain `cargo test` run.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether missing tools fail the test instead of skipping it.
pub fn require_all() -> bool {
    std::env::var_os("CPLB_TEST_REQUIRE_ALL").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Reports that `what` is missing: panics under `CPLB_TEST_REQUIRE_ALL`,
/// else prints one `SKIP` line and returns `false` so the test can return.
pub fn missing(test: &str, what: &str) -> bool {
    if require_all() {
        panic!("{test}: {what} (CPLB_TEST_REQUIRE_ALL is set, so this is a failure, not a skip)");
    }
    let line = format!("SKIP {test}: {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    // One file per run lists every skip, so a summary can count them.
    if let Some(dir) = option_env!("CARGO_TARGET_TMPDIR")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(dir).join("skipped-tests.txt"))
    {
        let _ = f.write_all(line.as_bytes());
    }
    false
}

/// Finds `tool` on `PATH` (or at an absolute path).
pub fn find(tool: &str) -> Option<PathBuf> {
    let p = Path::new(tool);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|c| c.is_file())
}

/// `true` when `tool` exists; otherwise skips (or fails in CI) naming the
/// Debian package that provides it.
pub fn tool(test: &str, tool: &str, package: &str) -> bool {
    find(tool).is_some()
        || missing(
            test,
            &format!("needs `{tool}` (Debian package {package}: apt-get install {package})"),
        )
}

/// `true` when the file at `path` (a plug-in, a data file) exists;
/// otherwise skips (or fails in CI) naming the package that ships it.
pub fn file(test: &str, path: &str, package: &str) -> bool {
    Path::new(path).is_file()
        || missing(
            test,
            &format!("needs {path} (Debian package {package}: apt-get install {package})"),
        )
}

/// `true` when running as root; otherwise skips (or fails in CI).
pub fn root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || missing(test, &format!("needs root ({why})"))
}
