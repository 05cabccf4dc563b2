//! Config fixtures: every valid one loads, every invalid one is refused with
//! a message naming the file, the field and the reason (first line of each
//! invalid fixture: `# expect: <text the message must contain>`). And the
//! same through `cplb --check`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "fixtures missing in {}", dir.display());
    v
}

fn expectation(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} lacks a '# expect: ' first line", path.display()))
        .to_string()
}

#[test]
fn valid_fixtures_load() {
    for p in fixtures("valid") {
        cplb::Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

#[test]
fn invalid_fixtures_are_refused_with_file_field_and_reason() {
    for p in fixtures("invalid") {
        let err = match cplb::Config::load(&p) {
            Ok(_) => panic!("{} was accepted", p.display()),
            Err(e) => e.to_string(),
        };
        let want = expectation(&p);
        assert!(
            err.contains(&want),
            "{}:\n  got:  {err}\n  want: {want}",
            p.display()
        );
        assert!(
            err.contains(&p.display().to_string()),
            "message names the file: {err}"
        );
    }
}

#[test]
fn defaults_are_nginx_defaults() {
    let c = cplb::Config::parse(
        "upstreams:\n  - address: a.example:6443\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(
        (u.weight.get(), u.max_fails, u.fail_timeout.as_secs()),
        (1, 1, 10)
    );
    assert_eq!(c.connect_timeout.as_secs(), 60, "proxy_connect_timeout");
    assert_eq!(c.idle_timeout.as_secs(), 600, "proxy_timeout");
    assert_eq!(c.backlog.get(), 511, "NGX_LISTEN_BACKLOG");
    assert_eq!(c.listen, vec!["127.0.0.1:8443".parse().unwrap()]);
    assert_eq!(c.hash.key, cplb::config::HashKey::Node);
    assert_eq!(
        c.next_upstream_tries.get(),
        1,
        "0 means every upstream once"
    );
    assert_eq!(c.admin, Some("127.0.0.1:8081".parse().unwrap()));
}

#[test]
fn shipped_config_is_the_reference_setup() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cplb.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    let c = common::shipped::parse(&text, &p);
    assert_eq!(c.upstreams.len(), 3);
    for u in &c.upstreams {
        assert_eq!(
            (u.weight.get(), u.max_fails, u.fail_timeout.as_secs()),
            (5, 1, 3)
        );
    }
    assert_eq!(
        (c.connect_timeout.as_secs(), c.idle_timeout.as_secs()),
        (3, 3000)
    );
    assert_eq!(c.hash.key, cplb::config::HashKey::Node);
}

fn cplb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cplb"))
}

#[test]
fn check_flag_accepts_valid_and_refuses_invalid() {
    for p in fixtures("valid") {
        let out = cplb()
            .arg("--config")
            .arg(&p)
            .arg("--check")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("test is successful"), "{stdout}");
    }
    for p in fixtures("invalid") {
        let out = cplb().arg("-c").arg(&p).arg("-t").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", p.display());
        assert!(
            stderr.contains(&expectation(&p)),
            "{}: {stderr}",
            p.display()
        );
        assert!(stderr.contains("test failed"), "{stderr}");
    }
    let out = cplb()
        .args(["--config", "/nonexistent/cplb.yaml", "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not read /nonexistent/cplb.yaml"),
        "{stderr}"
    );
}
