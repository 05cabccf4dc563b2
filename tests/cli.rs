//! The command line: options that do not apply are refused, `-` is
//! standard input, and a closed stdout pipe is not an error.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn cplb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cplb"))
}

#[test]
fn config_and_check_with_a_subcommand_are_refused() {
    for args in [
        &["--config", "x.yaml", "demo"][..],
        &["--check", "demo"],
        &["-c", "x.yaml", "import-nginx", "n.conf"],
        &["-t", "import-nginx", "n.conf"],
    ] {
        let out = cplb().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("does not apply to `cplb "),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn import_nginx_reads_standard_input_from_dash() {
    let mut child = cplb()
        .args(["import-nginx", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"stream {\n upstream m { server 10.0.0.7:6443; }\n server { listen 127.0.0.1:6443; proxy_pass m; }\n}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("address: 10.0.0.7:6443"), "{stdout}");

    let mut child = cplb()
        .args(["import-nginx", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"stream {\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.starts_with("cplb: <stdin>:1:"), "{stderr}");
}

#[test]
fn file_argument_has_help_text() {
    let out = cplb().args(["import-nginx", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("<FILE>"))
        .unwrap_or_else(|| panic!("{help}"));
    assert!(line.contains("standard input"), "{help}");
}

/// `cplb demo | head -1`: the reader closes the pipe after one line; the
/// demo must stop quietly with status 0, not report a broken pipe.
#[test]
fn demo_into_a_closed_pipe_exits_zero_quietly() {
    let mut child = cplb()
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe is closed.
    assert!(first.starts_with("== 1."), "{first}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    println!("demo after a closed pipe: {status}, stderr {stderr:?}");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !stderr.contains("Broken pipe") && !stderr.contains("demo failed"),
        "{stderr}"
    );
}

/// `cplb -t | head -0` and `cplb import-nginx … | head -0`: the reader is
/// gone before cplb writes. cplb must not panic (`println!` would) and
/// exits as it would into an open pipe.
#[test]
fn check_and_import_into_a_closed_pipe_do_not_panic() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let minimal = fixtures.join("config/valid/minimal.yaml");
    let minimal = minimal.to_str().unwrap();
    for args in [&["-t", "-c", minimal][..], &["import-nginx", "-"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        // Closed before cplb starts: its first write meets EPIPE.
        drop(reader);
        let mut child = cplb()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"stream {\n upstream m { server 10.0.0.7:6443; }\n server { listen 127.0.0.1:6443; proxy_pass m; }\n}\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "{args:?} into a closed pipe: {}, stderr {stderr:?}",
            out.status
        );
        assert!(out.status.success(), "{args:?}: {}: {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `cplb --help` lists each subcommand with its own one-line description:
/// `simulate` with the simulation's, `discover` with discovery's (each was
/// once given the other's, or none).
#[test]
fn help_describes_each_subcommand_with_its_own_text() {
    let out = cplb().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    println!("{help}");
    let line = |cmd: &str| {
        help.lines()
            .find(|l| l.split_whitespace().next() == Some(cmd))
            .unwrap_or_else(|| panic!("no `{cmd}` in --help:\n{help}"))
            .to_string()
    };
    let expect = [
        ("demo", "Watch cplb work"),
        ("import-nginx", "Convert an nginx `stream` proxy config"),
        ("status", "Show the upstreams of a running cplb"),
        ("simulate", "Simulate a cluster's proxies and masters"),
        ("discover", "Check the config's `discovery:` section"),
    ];
    for (cmd, about) in expect {
        let l = line(cmd);
        assert!(l.contains(about), "`{cmd}` is described as {l:?}");
        for (other, other_about) in expect {
            if other != cmd {
                assert!(
                    !l.contains(other_about),
                    "`{cmd}` has {other}'s text: {l:?}"
                );
            }
        }
    }
    // The long help of each says what the command does, not the other's.
    let long = |cmd: &str| {
        let out = cplb().args([cmd, "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let d = long("discover");
    assert!(
        d.contains("one JSON line per change") && !d.contains("fail-back"),
        "{d}"
    );
    let s = long("simulate");
    assert!(
        s.contains("fail-back") && !s.contains("EndpointSlice") && !s.contains("JSON line"),
        "{s}"
    );
}

/// A kubeconfig with a token: loads without a cluster. It names a CA, as
/// kubeadm's do, so it does not depend on the machine's trust store.
fn token_kubeconfig() -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        common::shipped::test_ca().display()
    )
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cplb-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config whose discovery can never get a list: its only upstream is a
/// closed port.
fn discovery_config(d: &std::path::Path, kubeconfig: &std::path::Path) -> std::path::PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let config = d.join("cplb.yaml");
    std::fs::write(
        &config,
        format!(
            "upstreams:\n  - address: {addr}\ndiscovery:\n  kubeconfig: {}\n  state_file: {}\n",
            kubeconfig.display(),
            d.join("state/upstreams.json").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn discover_takes_config_after_the_subcommand_and_once_ends_with_an_error() {
    let d = dir("discover");
    let missing = d.join("no-such.conf");
    let config = discovery_config(&d, &missing);
    let t = std::time::Instant::now();
    let out = cplb()
        .args(["discover", "-c", config.to_str().unwrap(), "--once"])
        .args(["--timeout", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("discover --once --timeout 1s ended after {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("no list within 1s"), "{stderr}");
    // The path once, unquoted; and no claim to serve anything.
    assert_eq!(
        stderr
            .lines()
            .last()
            .unwrap()
            .matches(missing.to_str().unwrap())
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("serving"), "{stderr}");
    assert!(!stderr.contains('\''), "{stderr}");
}

#[test]
fn check_reads_the_kubeconfig_and_writes_beside_the_state_file() {
    let d = dir("check");
    let kubeconfig = d.join("kubelet.conf");
    let config = discovery_config(&d, &kubeconfig);
    let check = || {
        let out = cplb()
            .args(["-t", "-c", config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Neither the kubeconfig nor the state file's directory exists yet.
    let (code, _, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cplb.yaml: discovery.kubeconfig: could not read the kubeconfig"),
        "{stderr}"
    );
    std::fs::write(&kubeconfig, token_kubeconfig()).unwrap();
    let (code, _, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cplb.yaml: discovery.state_file: could not write the state file"),
        "{stderr}"
    );
    std::fs::create_dir(d.join("state")).unwrap();
    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(", discovery default/kubernetes (kubeconfig ")
            && stdout.contains(", fail-back on (settle 30s))"),
        "{stdout}"
    );
    // The check leaves nothing behind.
    assert_eq!(std::fs::read_dir(d.join("state")).unwrap().count(), 0);
}

/// As the user cplb runs as: a kubeconfig it can read that names a client
/// certificate it cannot (kubeadm's, root's 0600) is refused by --check,
/// though kube itself reads the certificate only when it builds a client.
#[test]
fn check_reads_the_credentials_as_the_running_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let test = "check_reads_the_credentials_as_the_running_user";
    if !common::require::root(test, "files of root's that uid 58443 cannot read") {
        return;
    }
    let d = dir("credentials");
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["system:node:worker-1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = d.join("kubelet-client-current.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let kubeconfig = d.join("kubelet.conf");
    std::fs::write(
        &kubeconfig,
        token_kubeconfig().replace(
            "    token: t\n",
            &format!(
                "    client-certificate: {0}\n    client-key: {0}\n",
                pem.display()
            ),
        ),
    )
    .unwrap();
    let config = discovery_config(&d, &kubeconfig);
    std::fs::create_dir(d.join("state")).unwrap();
    for (p, m) in [
        (&d, 0o755),
        (&kubeconfig, 0o644),
        (&config, 0o644),
        (&d.join("state"), 0o777),
        (&pem, 0o600),
    ] {
        mode(p, m);
    }
    let check = || {
        let out = cplb()
            .args(["-t", "-c", config.to_str().unwrap()])
            .uid(58443)
            .gid(58443)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("discovery.kubeconfig: could not load the credentials")
            && stderr.contains("Permission denied"),
        "{stderr}"
    );
    mode(&pem, 0o644);
    let (code, stderr) = check();
    assert_eq!(code, Some(0), "{stderr}");
}
