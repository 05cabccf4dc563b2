//! `cplb import-nginx`: the library conversion on the reference config,
//! kubespray's nginx-proxy and broken files, and the built binary end to end
//! (import, then `--check` the result).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cplb::config::HashKey;
use cplb::import::{Conversion, ImportError, convert};
use serde_yaml_ng::Value;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nginx")
        .join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).expect("fixture is readable")
}

fn converted(name: &str) -> Conversion {
    match convert(&fixture(name)) {
        Ok(c) => c,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn yaml(c: &Conversion) -> Value {
    serde_yaml_ng::from_str(&c.yaml).expect("output is YAML")
}

fn config(c: &Conversion) -> cplb::Config {
    cplb::Config::parse(&c.yaml, Path::new("out.yaml")).expect("output is a valid cplb config")
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping()
        .expect("a mapping")
        .keys()
        .map(|k| k.as_str().expect("string key").to_string())
        .collect()
}

fn upstream_fields(v: &Value) -> Vec<Vec<(String, String)>> {
    v["upstreams"]
        .as_sequence()
        .expect("upstreams is a list")
        .iter()
        .map(|u| {
            u.as_mapping()
                .expect("upstream is a mapping")
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        other => panic!("unexpected {other:?}"),
                    };
                    (k.as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reference_config() {
    let c = converted("reference.conf");
    let v = yaml(&c);
    assert_eq!(
        keys(&v),
        [
            "listen",
            "workers",
            "max_connections",
            "connect_timeout",
            "idle_timeout",
            "admin",
            "hash",
            "upstreams"
        ]
    );
    assert_eq!(v["listen"].as_str(), Some("0.0.0.0:8443"));
    assert_eq!(v["workers"].as_u64(), Some(0));
    assert_eq!(v["max_connections"].as_u64(), Some(20240));
    assert_eq!(v["connect_timeout"].as_str(), Some("3s"));
    assert_eq!(v["idle_timeout"].as_str(), Some("3000s"));
    assert_eq!(v["admin"].as_str(), Some("127.0.0.1:8081"));
    assert_eq!(v["hash"]["key"].as_str(), Some("node"));
    let server = |n: &str| {
        pairs(&[
            ("address", n),
            ("weight", "5"),
            ("max_fails", "1"),
            ("fail_timeout", "3s"),
        ])
    };
    assert_eq!(
        upstream_fields(&v),
        [
            server("server1.k8s.local:6443"),
            server("server2.k8s.local:6443"),
            server("server3.k8s.local:6443")
        ]
    );
    // The comment says why $remote_addr is not kept, next to the hash key.
    assert!(
        c.yaml
            .contains("# nginx: hash $remote_addr consistent (line 5).")
    );
    assert!(
        c.yaml
            .contains("Every client of a node-local proxy is 127.0.0.1")
    );
    assert!(
        c.yaml
            .contains("should listen on 127.0.0.1 only: listen: 127.0.0.1:8443")
    );
    assert_eq!(
        c.warnings,
        [
            "line 2: \"use epoll\" ignored: cplb's event loop (epoll) needs no tuning",
            "line 2: worker_connections 20240 was per worker with worker_processes auto (one worker per CPU); cplb's max_connections is for the whole process: set max_connections: 20240 × CPUs if you need nginx's total",
            "line 5: hash $remote_addr converted to key node: every client of a node-local proxy is 127.0.0.1, so $remote_addr sends every node to one master; key node spreads the nodes (use key: remote_addr to keep nginx's choice)",
            "line 10: listen 8443 binds every address (0.0.0.0:8443), as in nginx; a node-local proxy should listen on 127.0.0.1 only (listen: 127.0.0.1:8443)",
        ]
    );

    let cfg = config(&c);
    assert_eq!(cfg.listen, ["0.0.0.0:8443".parse().unwrap()]);
    assert_eq!(cfg.hash.key, HashKey::Node);
    assert_eq!(cfg.connect_timeout, Duration::from_secs(3));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(3000));
    assert_eq!(cfg.max_connections.get(), 20240);
    assert_eq!(cfg.upstreams.len(), 3);
    assert!(cfg.upstreams.iter().all(|u| u.weight.get() == 5
        && u.max_fails == 1
        && u.fail_timeout == Duration::from_secs(3)));
    // Keys nginx did not set keep cplb's (= nginx's) defaults.
    assert_eq!(cfg.backlog.get(), 511);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(30));
}

#[test]
fn kubespray_nginx_proxy() {
    let c = converted("kubespray.conf");
    let v = yaml(&c);
    assert_eq!(
        keys(&v),
        [
            "listen",
            "workers",
            "max_connections",
            "connect_timeout",
            "idle_timeout",
            "shutdown_grace",
            "admin",
            "hash",
            "upstreams"
        ]
    );
    let listen: Vec<&str> = v["listen"]
        .as_sequence()
        .expect("several listen lines make a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listen, ["127.0.0.1:6443", "[::1]:6443"]);
    assert_eq!(v["workers"].as_u64(), Some(2));
    assert_eq!(v["max_connections"].as_u64(), Some(2 * 16384));
    assert_eq!(v["connect_timeout"].as_str(), Some("1s"));
    assert_eq!(v["idle_timeout"].as_str(), Some("10m"));
    assert_eq!(v["shutdown_grace"].as_str(), Some("10s"));
    assert_eq!(v["admin"].as_str(), Some("127.0.0.1:8081"));
    assert_eq!(v["hash"]["key"].as_str(), Some("node"));
    assert!(
        c.yaml
            .contains("# nginx: least_conn (line 18); cplb has none.")
    );
    // No weight/max_fails/fail_timeout in nginx: none in the output.
    assert_eq!(
        upstream_fields(&v),
        [
            pairs(&[("address", "10.0.0.1:6443")]),
            pairs(&[("address", "10.0.0.2:6443")]),
            pairs(&[("address", "10.0.0.3:6443")])
        ]
    );
    assert_eq!(
        c.warnings,
        [
            "line 4: \"error_log stderr notice\" ignored: cplb logs to stderr; RUST_LOG sets the level",
            "line 7: \"worker_rlimit_nofile 130048\" ignored: cplb does not change its open-file limit; set it in the container runtime or the systemd unit (LimitNOFILE)",
            "line 11: \"multi_accept on\" ignored: cplb's event loop (epoll) needs no tuning",
            "line 12: \"use epoll\" ignored: cplb's event loop (epoll) needs no tuning",
            "line 18: cplb has no least_conn; it hashes by node (hash: {key: node}), which spreads the nodes across the masters",
            "line 33: \"http\" block ignored: cplb is not an HTTP server; its admin endpoint (admin: 127.0.0.1:8081) answers GET /healthz and /readyz in place of an http server's /healthz",
            "line 54: \"pid /tmp/nginx.pid\" ignored: cplb writes no pid file",
        ]
    );

    let cfg = config(&c);
    assert_eq!(
        cfg.listen,
        [
            "127.0.0.1:6443".parse().unwrap(),
            "[::1]:6443".parse().unwrap()
        ]
    );
    assert_eq!(cfg.workers.get(), 2);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(600));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(1));
    assert_eq!(cfg.admin, Some("127.0.0.1:8081".parse().unwrap()));
    assert!(
        cfg.upstreams
            .iter()
            .all(|u| u.weight.get() == 1 && u.max_fails == 1)
    );
}

#[test]
fn partly_supported_directives_are_converted_or_warned() {
    let c = converted("extras.conf");
    let v = yaml(&c);
    assert_eq!(v["listen"][0].as_str(), Some("127.0.0.1:6443"));
    assert_eq!(v["listen"][1].as_str(), Some("[::1]:6443"));
    assert_eq!(v["listen"][2].as_str(), Some("127.0.0.1:7443"));
    assert_eq!(v["backlog"].as_u64(), Some(1024));
    // Inherited from the stream block.
    assert_eq!(v["connect_timeout"].as_str(), Some("500ms"));
    assert_eq!(v["next_upstream_tries"].as_u64(), Some(2));
    assert_eq!(
        upstream_fields(&v),
        [
            pairs(&[
                ("address", "m1.example:6443"),
                ("weight", "2"),
                ("fail_timeout", "1m")
            ]),
            pairs(&[("address", "m3.example:6443"), ("max_fails", "0")]),
        ]
    );
    assert!(c.yaml.contains("# nginx: backup. cplb has no backup tier"));
    assert!(c.yaml.contains("# nginx: round robin; cplb has none."));
    assert_eq!(
        c.warnings,
        [
            "line 2: \"pid /run/nginx.pid\" ignored: cplb writes no pid file",
            "line 4: \"resolver 127.0.0.53\" ignored: cplb resolves upstream names with the system resolver",
            "line 6: the upstream has no hash or least_conn (round robin); cplb has no round robin: key node spreads the nodes across the masters instead",
            "line 8: \"zone masters 64k\" ignored: cplb keeps upstream state in one process; there is no shared zone to size",
            "line 10: server m2.example:6443 is marked down; left out",
            "line 11: server m3.example:6443 is a backup in nginx; cplb has no backup tier: it is an ordinary upstream here",
            "line 16: \"proxy_protocol on\" ignored: cplb does not send the PROXY protocol header to upstreams",
            "line 17: \"ssl_preread on\" ignored: cplb does not read the TLS handshake; it forwards bytes untouched",
        ]
    );
    let cfg = config(&c);
    assert_eq!(cfg.upstreams.len(), 2);
    assert_eq!(cfg.next_upstream_tries.get(), 2);
    assert_eq!(cfg.connect_timeout, Duration::from_millis(500));
}

#[test]
fn hash_keys_and_variants() {
    let with = |balance: &str| {
        let text = format!(
            "stream {{\n upstream u {{\n  {balance}\n  server 10.0.0.1:6443;\n }}\n server {{ listen 127.0.0.1:6443; proxy_pass u; }}\n}}\n"
        );
        match convert(&text) {
            Ok(c) => c,
            Err(e) => panic!("{balance}: {e}"),
        }
    };
    let c = with("hash $remote_addr;");
    assert_eq!(
        c.warnings,
        [
            "line 3: hash without consistent remapped most keys whenever a server changed; cplb always hashes consistently (ketama)",
            "line 3: hash $remote_addr converted to key node: every client of a node-local proxy is 127.0.0.1, so $remote_addr sends every node to one master; key node spreads the nodes (use key: remote_addr to keep nginx's choice)",
        ]
    );
    assert!(c.yaml.contains("so $remote_addr sends"));
    assert_eq!(config(&c).hash.key, HashKey::Node);

    let c = with("hash $binary_remote_addr consistent;");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("$binary_remote_addr converted to key node"));

    let c = with("hash $server_addr consistent;");
    assert_eq!(
        c.warnings,
        [
            "line 3: hash key $server_addr has no cplb equivalent; converted to key node, which spreads the nodes across the masters"
        ]
    );
    assert_eq!(yaml(&c)["hash"]["key"].as_str(), Some("node"));

    let c = with("random two least_conn;");
    assert_eq!(
        c.warnings,
        [
            "line 3: \"random two least_conn\" ignored: cplb has no random balancing; it hashes by node"
        ]
    );
    assert!(
        matches!(convert("stream { upstream u { hash $remote_addr fast; server 10.0.0.1:1; } server { listen 127.0.0.1:1; proxy_pass u; } }"), Err(e) if e.line() == 1 && e.to_string().contains("invalid parameters"))
    );
}

fn error(text: &str) -> ImportError {
    match convert(text) {
        Ok(c) => panic!("expected an error, got:\n{}", c.yaml),
        Err(e) => e,
    }
}

#[test]
fn broken_files_name_the_line() {
    for (name, line, reason) in [
        (
            "no_stream.conf",
            1,
            "no stream { upstream … } block: nothing for cplb to proxy",
        ),
        (
            "two_upstreams.conf",
            7,
            "proxy_pass b differs from proxy_pass a at line 4: cplb proxies to one upstream group; convert each server separately",
        ),
        (
            "unclosed.conf",
            1,
            "\"{\" is never closed (unexpected end of file)",
        ),
        ("extra_close.conf", 5, "unexpected \"}\""),
        (
            "unknown_proxy_pass.conf",
            5,
            "proxy_pass kube-apiserver: no upstream \"kube-apiserver\" in the stream block",
        ),
    ] {
        let e = error(&fixture(name));
        assert_eq!(e.line(), line, "{name}: {e}");
        assert_eq!(e.to_string(), format!("{line}: {reason}"), "{name}");
    }
}

/// `proxy_pass host:port` with no upstream block is valid nginx: a group
/// of that one server.
#[test]
fn proxy_pass_to_an_address_is_a_group_of_one() {
    let c = converted("no_upstream.conf");
    assert_eq!(
        upstream_fields(&yaml(&c)),
        [pairs(&[("address", "10.0.0.1:6443")])]
    );
    assert_eq!(config(&c).upstreams.len(), 1);
    let e = error("stream {\n server { listen 127.0.0.1:6443; proxy_pass masters; }\n}\n");
    assert_eq!(e.line(), 1, "{e}");
    assert!(e.to_string().contains("no upstream"), "{e}");
}

/// A name nginx does not know is refused with the one meant; one it knows
/// and cplb has no use for is a warning; an `include` inside stream may
/// hold the upstreams, so it is refused, never dropped.
#[test]
fn unknown_directives_and_includes_in_stream_are_errors() {
    let text = |extra: &str| {
        format!(
            "stream {{\n upstream m {{ server 10.0.0.7:6443; }}\n server {{ listen 127.0.0.1:6443; proxy_pass m; }}\n {extra}\n}}\n"
        )
    };
    for (extra, needle) in [
        (
            "proxy_timout 10m;",
            "4: unknown directive \"proxy_timout\" (did you mean \"proxy_timeout\"?)",
        ),
        (
            "frobnicate on;",
            "4: unknown directive \"frobnicate\": not an nginx directive",
        ),
        (
            "include /etc/nginx/stream.d/*.conf;",
            "4: \"include /etc/nginx/stream.d/*.conf\": import-nginx does not read included files",
        ),
    ] {
        let e = error(&text(extra));
        assert!(e.to_string().starts_with(needle), "{extra}: {e}");
    }
    // Inside a server and an upstream too.
    let e = error(
        "stream {\n upstream m { server 10.0.0.7:6443; hsah $remote_addr; }\n server { listen 127.0.0.1:6443; proxy_pass m; }\n}\n",
    );
    assert_eq!(
        e.to_string(),
        "2: unknown directive \"hsah\" (did you mean \"hash\"?)"
    );
    // Known to nginx, nothing in cplb: converted with a warning.
    let c = convert(&text("tcp_nodelay on;")).unwrap();
    assert_eq!(
        c.warnings.last().map(String::as_str),
        Some("line 4: \"tcp_nodelay on\" ignored: cplb has no equivalent")
    );
}

/// `server` equal to `listen` converts into cplb proxying to itself.
#[test]
fn a_server_that_is_the_listen_address_is_a_self_loop() {
    for (server, listen) in [
        ("127.0.0.1:8443", "127.0.0.1:8443"),
        ("127.0.0.1:8443", "8443"),
    ] {
        let e = error(&format!(
            "stream {{\n upstream m {{\n  server 10.0.0.2:6443;\n  server {server};\n }}\n server {{ listen {listen}; proxy_pass m; }}\n}}\n"
        ));
        assert_eq!(e.line(), 4, "{e}");
        assert!(e.to_string().contains("(a self-loop)"), "{e}");
    }
}

#[test]
fn unusable_values_name_the_line() {
    let base = |upstream: &str, server: &str| {
        format!(
            "stream {{\n upstream u {{\n{upstream}\n }}\n server {{\n{server}\n proxy_pass u;\n }}\n}}\n"
        )
    };
    let ok_server = "listen 127.0.0.1:6443;";
    let ok_upstream = "server 10.0.0.1:6443;";
    for (text, line, needle) in [
        (base("server 10.0.0.1;", ok_server), 3, "expected host:port"),
        (
            base("server unix:/x.sock;", ok_server),
            3,
            "TCP addresses only",
        ),
        (
            base("server 10.0.0.1:6443 weight=0;", ok_server),
            3,
            "between 1 and 1000",
        ),
        (
            base("server 10.0.0.1:6443 bogus;", ok_server),
            3,
            "invalid parameter \"bogus\"",
        ),
        (
            base("server 10.0.0.1:6443 down;", ok_server),
            2,
            "no server cplb can use",
        ),
        (
            base("server 10.0.0.1:6443;\nserver 10.0.0.1:6443;", ok_server),
            4,
            "duplicate server 10.0.0.1:6443 (first at line 3)",
        ),
        (
            base(ok_upstream, "listen localhost:6443;"),
            6,
            "ip:port addresses",
        ),
        (
            base(ok_upstream, "listen 127.0.0.1:6443 udp;"),
            6,
            "TCP only",
        ),
        (
            base(ok_upstream, "listen 127.0.0.1:6443 ssl;"),
            6,
            "does not terminate TLS",
        ),
        (
            base(ok_upstream, "listen 127.0.0.1:6443; proxy_timeout 0;"),
            6,
            "greater than 0",
        ),
        (
            base(ok_upstream, "listen 127.0.0.1:6443; proxy_timeout 5x;"),
            6,
            "not an nginx time",
        ),
        (base(ok_upstream, ""), 5, "server block without listen"),
        (
            "stream { upstream u { server 10.0.0.1:6443; } server { listen 127.0.0.1:1; } }".into(),
            1,
            "server block without proxy_pass",
        ),
        (
            "worker_processes many;\nstream {}".into(),
            1,
            "must be a number",
        ),
        (
            "stream \"unterminated;\n".into(),
            1,
            "unterminated quoted string",
        ),
        (
            "stream {\n upstream u { server 10.0.0.1:6443 }\n}".into(),
            2,
            "is not terminated by \";\"",
        ),
    ] {
        let e = error(&text);
        assert_eq!(e.line(), line, "{text}\n=> {e}");
        assert!(e.to_string().contains(needle), "{text}\n=> {e}");
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A file path no other test (or test run) uses; removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(stem: &str) -> TempFile {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(std::env::temp_dir().join(format!(
            "cplb-import-{}-{n}-{stem}.yaml",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn cplb(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(args)
        .output()
        .expect("the cplb binary runs")
}

#[test]
fn binary_imports_then_checks() {
    for name in ["reference.conf", "kubespray.conf", "extras.conf"] {
        let input = fixture_path(name);
        let out = cplb(&["import-nginx".as_ref(), input.as_os_str()]);
        assert!(out.status.success(), "{name}: {out:?}");
        let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
        let stderr = String::from_utf8(out.stderr).expect("utf-8 output");
        let lib = converted(name);
        assert_eq!(stdout, lib.yaml, "{name}");
        let warnings: Vec<&str> = stderr.lines().collect();
        let want: Vec<String> = lib
            .warnings
            .iter()
            .map(|w| format!("cplb: warning: {w}"))
            .collect();
        assert_eq!(warnings, want, "{name}");

        let file = TempFile::new(name);
        std::fs::write(&file.0, &stdout).expect("temp file is writable");
        let check = cplb(&["--config".as_ref(), file.0.as_os_str(), "--check".as_ref()]);
        assert!(check.status.success(), "{name}: {check:?}");
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(said.contains("test is successful"), "{name}: {said}");
    }
}

#[test]
fn binary_reports_file_and_line() {
    let input = fixture_path("unknown_proxy_pass.conf");
    let out = cplb(&["import-nginx".as_ref(), input.as_os_str()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout for a broken file");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "cplb: {}:5: proxy_pass kube-apiserver: no upstream \"kube-apiserver\" in the stream block\n",
            input.display()
        )
    );

    let missing = fixture_path("does-not-exist.conf");
    let out = cplb(&["import-nginx".as_ref(), missing.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("cplb: could not read "), "{stderr}");
}

#[test]
fn no_panic_on_any_prefix_of_the_fixtures() {
    // Every truncation of a real config: errors are fine, panics are not.
    // Counting the outcomes makes sure the loop really ran both ways.
    let (mut ok, mut err) = (0, 0);
    for name in ["reference.conf", "kubespray.conf", "extras.conf"] {
        let text = fixture(name);
        for (i, _) in text.char_indices() {
            match convert(&text[..i]) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.line() >= 1, "{name}[..{i}]: {e}");
                    err += 1;
                }
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

/// 200,000 nested `a {` used to overflow the stack and abort the process.
const DEEP: usize = 200_000;

#[test]
fn deep_nesting_is_an_error_naming_the_line() {
    let e = error(&"a {\n".repeat(DEEP));
    assert!(e.to_string().contains("nested more than"), "{e}");
    assert_eq!(e.line(), 101, "{e}");
    // Closed, too: the depth is refused before the end is seen.
    let closed = "a {\n".repeat(DEEP) + &"}\n".repeat(DEEP);
    assert_eq!(error(&closed).line(), 101);
}

#[test]
fn binary_refuses_deep_nesting_without_aborting() {
    let file = TempFile::new("deep.conf");
    std::fs::write(&file.0, "a {\n".repeat(DEEP)).expect("temp file is writable");
    let out = cplb(&["import-nginx".as_ref(), file.0.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A stack overflow ends in SIGABRT: no exit code at all.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "cplb: {}:101: blocks nested more than 100 deep\n",
            file.0.display()
        )
    );
}

#[test]
fn a_commented_discovery_section_is_offered() {
    let c = converted("reference.conf");
    assert!(c.yaml.contains("\n# discovery:\n"), "{}", c.yaml);
    // Commented out, the config is static only.
    assert!(config(&c).discovery.is_none());
    // Uncommented as printed, it is a valid section with the issue's values.
    let (head, tail) = c.yaml.split_once("# discovery:\n").unwrap();
    let uncommented: String = tail
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let text = format!("{head}discovery:\n{uncommented}");
    let on = cplb::Config::parse(&text, std::path::Path::new("imported.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let d = on.discovery.expect("discovery on");
    assert_eq!(d.kubeconfig, PathBuf::from("/etc/kubernetes/kubelet.conf"));
    assert_eq!(d.service_ref(), "default/kubernetes");
    assert_eq!(d.remove_after, std::time::Duration::from_secs(300));
}

/// Finding 15 of issue 19: a quoted upstream name holding a newline
/// injected a top-level `max_connections: 1` into the output, which `-t`
/// then accepted. The name stays in its comment, escaped.
#[test]
fn a_name_with_line_breaks_injects_nothing() {
    for brk in ["\n", "\r\n", "\r", "\u{85}", "\u{2028}"] {
        let name = format!("m{brk}max_connections: 1{brk}#");
        let text = format!(
            "stream {{\n  upstream \"{name}\" {{ server 10.0.0.7:6443; }}\n  server {{ listen 127.0.0.1:6443; proxy_pass \"{name}\"; }}\n}}\n"
        );
        let c = convert(&text).unwrap_or_else(|e| panic!("{brk:?}: {e}"));
        let v = yaml(&c);
        assert_eq!(
            keys(&v),
            ["listen", "admin", "hash", "upstreams"],
            "{brk:?}:\n{}",
            c.yaml
        );
        let plain = convert(&text.replace(&name, "m")).unwrap();
        assert_eq!(config(&c).max_connections, config(&plain).max_connections);
        assert_eq!(
            c.yaml
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            plain
                .yaml
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            "only the comment differs"
        );
        let escaped = cplb::logfmt::Escaped(&name).to_string();
        assert!(
            c.yaml
                .contains(&format!("\n# nginx: upstream {escaped} (line 2).\n")),
            "{brk:?}:\n{}",
            c.yaml
        );
    }
    // The binary: import, then `-t` on what it printed.
    let file = TempFile::new("injection.conf");
    std::fs::write(
        &file.0,
        "stream {\n  upstream \"m\nmax_connections: 1\n#\" { server 10.0.0.7:6443; }\n  server { listen 127.0.0.1:6443; proxy_pass \"m\nmax_connections: 1\n#\"; }\n}\n",
    )
    .unwrap();
    let out = cplb(&["import-nginx".as_ref(), file.0.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    println!("{stdout}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("max_connections")),
        "{stdout}"
    );
    let yaml_file = TempFile::new("injection.yaml");
    std::fs::write(&yaml_file.0, &stdout).unwrap();
    let check = cplb(&["-t".as_ref(), "-c".as_ref(), yaml_file.0.as_os_str()]);
    assert!(check.status.success(), "{check:?}");
}
