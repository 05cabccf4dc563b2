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
    // 0 means every upstream once: the snapshot caps it at the running
    // set, which discovery can grow past the configured list.
    assert_eq!(c.next_upstream_tries.get(), usize::MAX);
    let m = cplb::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let built = cplb::snapshot::Snapshot::build(&c, &mut Default::default(), &m).unwrap();
    assert_eq!(built.snapshot.settings.tries, 1);
    assert_eq!(c.admin, Some("127.0.0.1:8081".parse().unwrap()));
    // cplb's own, beyond nginx (docs/configuration.md says why).
    assert_eq!(
        c.first_byte_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(c.tcp_user_timeout, Some(std::time::Duration::from_secs(30)));
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
        // With discovery, --check also reads the kubeconfig the fixture
        // names, /etc/kubernetes/kubelet.conf: a kubeadm node's file, which
        // a machine running the tests usually lacks (tests/cli.rs checks
        // it with files of its own).
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains(
            ": discovery.kubeconfig: could not read the kubeconfig /etc/kubernetes/kubelet.conf",
        ) {
            assert!(
                !Path::new("/etc/kubernetes/kubelet.conf").exists(),
                "{stderr}"
            );
            continue;
        }
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

fn parse_err(text: &str) -> String {
    match cplb::Config::parse(text, Path::new("t.yaml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_key_on_the_first_line_has_line_and_column() {
    let err = parse_err("foo: 1\nupstreams:\n  - address: a:1\n");
    assert!(err.contains("unknown field `foo`"), "{err}");
    assert!(err.ends_with("at line 1 column 1"), "{err}");
}

#[test]
fn messages_carry_no_rust_type_names() {
    let cases = [
        "workers: -1\nupstreams: [{address: a:1}]\n",
        "backlog: 1.5\nupstreams: [{address: a:1}]\n",
        "upstreams: [{address: a:1, weight: 99999999999999999999}]\n",
        "upstreams: [{address: a:1, weight: 1.5}]\n",
        "upstreams: [{address: a:1, max_fails: -1}]\n",
        "upstreams: 5\n",
        "hash: 5\nupstreams: [{address: a:1}]\n",
        "health_check: [1]\nupstreams: [{address: a:1}]\n",
        "- a\n",
        "just text\n",
    ];
    for text in cases {
        let err = parse_err(text);
        for internal in [
            "i64",
            "u64",
            "u32",
            "u128",
            "usize",
            "Raw",
            "unit value",
            "struct",
        ] {
            assert!(!err.contains(internal), "{internal:?} in: {err}");
        }
    }
}

#[test]
fn empty_values_are_refused_the_same_way_everywhere() {
    for (text, field) in [
        ("admin:\nupstreams: [{address: a:1}]\n", "admin"),
        ("admin: ~\nupstreams: [{address: a:1}]\n", "admin"),
        (
            "health_check:\nupstreams: [{address: a:1}]\n",
            "health_check",
        ),
        ("hash:\nupstreams: [{address: a:1}]\n", "hash"),
        ("listen:\nupstreams: [{address: a:1}]\n", "listen"),
        (
            "connect_timeout:\nupstreams: [{address: a:1}]\n",
            "connect_timeout",
        ),
        ("upstreams:\n", "upstreams"),
        ("upstreams:\n  -\n", "upstreams[0]"),
        ("upstreams:\n  - address:\n", "upstreams[0].address"),
    ] {
        let err = parse_err(text);
        assert!(
            err.contains(&format!("t.yaml: {field}: has no value")),
            "{text}: {err}"
        );
    }
    // The explicit ways to turn things off still work.
    let c = cplb::Config::parse(
        "admin: off\nupstreams: [{address: a:1}]\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert_eq!((c.admin, c.health_check), (None, None));
}

#[test]
fn check_line_names_admin_and_active_checks() {
    let dir = std::env::temp_dir().join(format!("cplb-check-line-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "upstreams: [{address: a:1}]\n",
            "(1 upstream, listen [127.0.0.1:8443], admin 127.0.0.1:8081, active health checks off,",
        ),
        (
            "admin: off\nhealth_check: {mode: tcp, interval: 5s}\nupstreams: [{address: a:1}, {address: b:1}]\n",
            "(2 upstreams, listen [127.0.0.1:8443], admin off, active health checks tcp every 5s,",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.join(format!("{i}.yaml"));
        std::fs::write(&p, text).unwrap();
        let out = cplb().arg("-c").arg(&p).arg("-t").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains(want), "got:  {stdout}want: {want}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn drain_grace_defaults_to_60s_and_is_read() {
    let c = cplb::Config::parse(
        "health_check:\n  mode: tcp\nupstreams:\n  - address: a.example:6443\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let hc = c.health_check.expect("health_check section");
    assert_eq!(hc.drain_grace.as_secs(), 60);
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config/valid/health-check-drain-grace.yaml");
    let c = cplb::Config::load(&p).unwrap();
    assert_eq!(c.health_check.unwrap().drain_grace.as_secs(), 86_400);
}

#[test]
fn a_node_name_past_253_bytes_is_refused_and_a_non_utf8_one_warns() {
    use std::os::unix::ffi::OsStrExt;
    let dir = common::process::temp_dir("node-name");
    let p = dir.join("cplb.yaml");
    std::fs::write(&p, "upstreams: [{address: a:1}]\n").unwrap();
    // 100 kB: near the kernel's limit for one environment string.
    for len in [254, 100_000] {
        let out = cplb()
            .arg("-c")
            .arg(&p)
            .arg("-t")
            .env("NODE_NAME", "n".repeat(len))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "hash.node_id: $NODE_NAME is {len} bytes, more than 253"
            )),
            "{stderr}"
        );
        assert!(
            stderr.len() < 1000,
            "the value is not echoed: {} bytes",
            stderr.len()
        );
    }
    let out = cplb()
        .arg("-c")
        .arg(&p)
        .arg("-t")
        .env("NODE_NAME", std::ffi::OsStr::from_bytes(b"worker-\xff\xfe"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NODE_NAME is not valid UTF-8; the node id is the hostname instead"),
        "{stderr}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        stdout.contains(&format!("node id {:?}", host.trim())),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
