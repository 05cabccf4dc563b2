//! The docs show what the binary does. Every fenced block preceded by a
//! `<!-- check: SETUP -->` comment in README.md, docs/*.md or
//! config/kubespray/README.md is run here and its output compared, byte for
//! byte, with what the block shows. And every relative link in those files
//! leads to a file (and a heading) that exists.
//!
//! A `console` block is a list of `$ command` lines, each followed by the
//! lines it prints (stdout and stderr, in order). `$ echo $?` prints the exit
//! status of the command before it. SETUP says where the commands run:
//! - `repo`: from the repository root (a temp dir with `config/` and
//!   `tests/` linked in, so `> cplb.yaml` writes nothing into the checkout);
//! - `repo-no-ca`: the same, on a machine without the cluster CA file the
//!   shipped config names (skipped, and said so, on a node that has it);
//! - `shipped`: the shipped configs, with their `ca_file` pointed at a
//!   throwaway CA (tests/common/shipped.rs); `cplb.yaml` is the DaemonSet's
//!   ConfigMap config;
//! - `status-unreachable`: `repo`, when nothing listens on 127.0.0.1:8081;
//! - `status`, `status-json`, `status-reload-failed`: compared with a real
//!   `cplb status` by `cplb_status_matches_the_documented_table`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use common::process::{CplbProcess, Options, temp_dir};
use common::shipped::{ca_file, with_test_ca};
use common::{Client, DEADLINE, FakeUpstream};

/// The node name the documented `--check` outputs were made with.
const NODE_NAME: &str = "worker-1";

/// Links to files another branch adds: allowed to be missing until it is
/// merged. Once the file exists, the test asks for its entry to go.
const PENDING: &[&str] = &[];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and docs/*.md, relative to the repository root.
fn doc_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The files whose checked blocks are run and whose links are followed.
fn checked_files() -> Vec<String> {
    let mut f = doc_files();
    f.push("config/kubespray/README.md".into());
    f
}

/// One `<!-- check: SETUP -->` block.
#[derive(Debug)]
struct Block {
    /// `file:line` of the opening fence.
    at: String,
    setup: String,
    body: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for file in checked_files() {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let Some(setup) = lines[i]
                .trim()
                .strip_prefix("<!-- check:")
                .and_then(|s| s.strip_suffix("-->"))
            else {
                i += 1;
                continue;
            };
            // A block inside a list item is indented like its marker.
            let indent = &lines[i][..lines[i].len() - lines[i].trim_start().len()];
            let unindent = |l: &str| l.strip_prefix(indent).unwrap_or(l).to_string();
            let fence = lines.get(i + 1).map(|l| unindent(l)).unwrap_or_default();
            assert!(
                fence.starts_with("```"),
                "{file}:{}: a check marker must be followed by a fenced block",
                i + 1
            );
            let end = (i + 2..lines.len())
                .find(|&j| unindent(lines[j]) == "```")
                .unwrap_or_else(|| panic!("{file}:{}: unclosed block", i + 2));
            out.push(Block {
                at: format!("{file}:{}", i + 2),
                setup: setup.trim().to_string(),
                body: lines[i + 2..end]
                    .iter()
                    .map(|l| unindent(l) + "\n")
                    .collect(),
            });
            i = end + 1;
        }
    }
    out
}

/// A console block as (command, expected output) pairs.
fn commands(body: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push((cmd.to_string(), String::new()));
        } else {
            let last = out.last_mut().expect("a console block starts with `$ `");
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out
}

/// A working directory for `setup`, or `None` (with the reason) to skip.
fn workdir(setup: &str) -> Result<PathBuf, String> {
    let dir = temp_dir("docs");
    let link = |name: &str| {
        std::os::unix::fs::symlink(root().join(name), dir.join(name)).expect("symlink");
    };
    match setup {
        "repo" => {
            link("config");
            link("tests");
        }
        "repo-no-ca" => {
            let ca = ca_file(&read("config/cplb.yaml")).expect("config/cplb.yaml names a CA");
            if Path::new(&ca).exists() {
                return Err(format!("{ca} exists on this machine"));
            }
            link("config");
            link("tests");
        }
        "promtool" => {
            if !common::require::tool(
                "console_blocks_print_what_the_binary_prints",
                "promtool",
                "prometheus",
            ) {
                return Err("no promtool".into());
            }
            link("config");
        }
        "status-unreachable" => {
            if std::net::TcpStream::connect("127.0.0.1:8081").is_ok() {
                return Err("something listens on 127.0.0.1:8081".into());
            }
            link("config");
            link("tests");
        }
        "shipped" => {
            std::fs::create_dir_all(dir.join("config/kubespray")).unwrap();
            for f in ["config/cplb.yaml", "config/kubespray/cplb.yaml"] {
                std::fs::write(dir.join(f), with_test_ca(&read(f))).unwrap();
            }
            std::fs::write(dir.join("cplb.yaml"), with_test_ca(&configmap_config())).unwrap();
        }
        other => panic!("unknown check setup {other:?}"),
    }
    Ok(dir)
}

/// The DaemonSet's config, from its ConfigMap.
fn configmap_config() -> String {
    serde_yaml_ng::Deserializer::from_str(&read("config/kubernetes/daemonset.yaml"))
        .map(|de| serde_yaml_ng::Value::deserialize(de).expect("valid YAML document"))
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["cplb.yaml"].as_str().map(str::to_string))
        .expect("the ConfigMap holds cplb.yaml")
}

/// Runs `cmd` with `sh` in `dir`, `cplb` first on PATH; stdout and stderr
/// in the order written, and the exit status.
fn run(dir: &Path, cmd: &str) -> (String, i32) {
    let bin = Path::new(env!("CARGO_BIN_EXE_cplb")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 2>&1\n{cmd}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("NODE_NAME", NODE_NAME)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sh");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

const CONSOLE_SETUPS: &[&str] = &[
    "repo",
    "repo-no-ca",
    "shipped",
    "status-unreachable",
    "promtool",
];
/// Blocks compared by the tests that run a proxy.
const STATUS_SETUPS: &[&str] = &[
    "status",
    "status-json",
    "status-reload-failed",
    "admin-readyz",
    "admin-upstreams",
    "logs",
];

#[test]
fn console_blocks_print_what_the_binary_prints() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for b in blocks() {
        assert!(
            CONSOLE_SETUPS.contains(&b.setup.as_str()) || STATUS_SETUPS.contains(&b.setup.as_str()),
            "{}: unknown check setup {:?}",
            b.at,
            b.setup
        );
        if !CONSOLE_SETUPS.contains(&b.setup.as_str()) {
            continue;
        }
        let dir = match workdir(&b.setup) {
            Ok(d) => d,
            Err(why) => {
                println!("not comparing {} ({}): {why}", b.at, b.setup);
                continue;
            }
        };
        let mut status = 0;
        for (cmd, expected) in commands(&b.body) {
            let actual = if cmd == "echo $?" {
                format!("{status}\n")
            } else {
                let (out, code) = run(&dir, &cmd);
                status = code;
                out
            };
            ran += 1;
            // Blank lines at the end of an output are not compared.
            let (actual, expected) = (
                actual.trim_end_matches('\n').to_string() + "\n",
                expected.trim_end_matches('\n').to_string() + "\n",
            );
            if actual != expected {
                failures.push(format!(
                    "{} ({}): `$ {cmd}`\n--- the doc shows:\n{expected}--- the binary printed:\n{actual}",
                    b.at, b.setup
                ));
            }
        }
    }
    println!("{ran} documented commands compared");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The commands the docs must show, checked: `--check` on every shipped
/// config, `import-nginx` on the reference config, and `cplb status`.
#[test]
fn the_docs_check_every_shipped_config_import_and_status() {
    let blocks = blocks();
    let shown = |setup: &str, cmd: &str| {
        blocks
            .iter()
            .filter(|b| b.setup == setup)
            .any(|b| commands(&b.body).iter().any(|(c, _)| c == cmd))
    };
    for (setup, cmd) in [
        ("shipped", "cplb -c config/cplb.yaml -t"),
        ("shipped", "cplb -c config/kubespray/cplb.yaml -t"),
        ("shipped", "cplb -c cplb.yaml -t"),
        ("repo-no-ca", "cplb -c config/cplb.yaml -t"),
        (
            "repo",
            "cplb import-nginx tests/fixtures/nginx/reference.conf > cplb.yaml",
        ),
        ("status-unreachable", "cplb status"),
    ] {
        assert!(shown(setup, cmd), "no checked `{setup}` block runs `{cmd}`");
    }
    assert!(
        shown(
            "promtool",
            "promtool check rules config/prometheus/cplb-alerts.yaml"
        ),
        "no checked `promtool check rules` block"
    );
    for setup in STATUS_SETUPS {
        assert!(
            blocks.iter().any(|b| b.setup == *setup),
            "no `{setup}` block"
        );
    }
    // The shipped configs the `shipped` setup provides are all there are.
    let shipped: BTreeSet<&str> = ["config/cplb.yaml", "config/kubespray/cplb.yaml"].into();
    for dir in ["config", "config/kubespray", "config/kubernetes"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
            let text = std::fs::read_to_string(root().join(&name)).unwrap_or_default();
            if name.ends_with(".yaml") && text.contains("\nupstreams:") {
                assert!(shipped.contains(name.as_str()), "{name} is not checked");
            }
        }
    }
}

/// The one block of `setup`.
fn block(setup: &str) -> Block {
    let mut b: Vec<Block> = blocks().into_iter().filter(|b| b.setup == setup).collect();
    assert_eq!(b.len(), 1, "one `{setup}` block: {b:?}");
    b.pop().unwrap()
}

/// A status line with numbers, times, ports and the config path made
/// neutral, and table cells separated by ` | `.
fn normalise(line: &str, config_path: &str) -> String {
    let line = line.replace(config_path, "CONFIG");
    let mut out = String::new();
    let mut digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The documented status table: header lines, then the table's rows sorted
/// (which upstream the client lands on depends on the ports).
fn table_shape(text: &str) -> (Vec<String>, Vec<String>) {
    let doc_path = text
        .lines()
        .find_map(|l| l.strip_prefix("config file:"))
        .map(|p| p.trim().to_string())
        .expect("a `config file:` line");
    let lines: Vec<String> = text.lines().map(|l| normalise(l, &doc_path)).collect();
    let split = lines
        .iter()
        .position(|l| l.starts_with("UPSTREAM"))
        .expect("a table header");
    let mut rows = lines[split + 1..].to_vec();
    rows.sort();
    let mut head = lines[..=split].to_vec();
    head.retain(|l| !l.is_empty());
    (head, rows)
}

/// Every key path of a JSON value (array elements merged).
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                key_paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn cplb_status(admin: SocketAddr, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["status", "--admin", &admin.to_string()])
        .args(extra)
        .output()
        .expect("run cplb status");
    let mut text = String::from_utf8(out.stdout).unwrap();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn status_json_until(admin: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, out) =
            tokio::task::spawn_blocking(move || cplb_status(admin, &["--output", "json"]))
                .await
                .unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&out)
            && cond(&v)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}; last answer: {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upstream<'a>(v: &'a Value, addr: &str) -> &'a Value {
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not in {v:#}"))
}

/// The config of the documented status example: three API servers with
/// active checks. Line 5 column 13 is the interval the refused reload
/// breaks.
fn status_yaml(ups: &[SocketAddr]) -> String {
    let mut y = String::from(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nhealth_check:\n  mode: tcp\n  interval: 300ms\n  rise: 1\n  fall: 1\nupstreams:\n",
    );
    for u in ups {
        y.push_str(&format!("  - address: {u}\n"));
    }
    y
}

/// `cplb status` against a running cplb: three fake API servers, one
/// stopped, one client connected. The documented table has the same header
/// lines, columns and rows, up to numbers, times and the config path; the
/// documented JSON the same keys and the down upstream's values; and the
/// documented refused-reload lines appear after a refused reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cplb_status_matches_the_documented_table() {
    let m1 = FakeUpstream::start("m1").await;
    let m2 = FakeUpstream::start("m2").await;
    let m3 = FakeUpstream::start("m3").await;
    let p = CplbProcess::spawn(
        &status_yaml(&[m1.addr, m2.addr, m3.addr]),
        Options::default(),
    );
    let admin = p.admin.expect("admin enabled");
    let path = p.config_path.display().to_string();

    // Stop a server that is not this node's home (`hash.key: node`, so one
    // home for every client): a client whose home is down would be
    // displaced, and the documented table shows no displaced connection.
    let home = Client::connect(p.addr).await.upstream.clone();
    let addrs = [("m1", m1.addr), ("m2", m2.addr), ("m3", m3.addr)];
    let stopped = if home == "m2" { m1 } else { m2 };
    let down = stopped.stop().await.to_string();
    status_json_until(admin, "the stopped server marked down", |v| {
        upstream(v, &down)["state"] == "down"
            && v["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| !u["last_check"].is_null())
    })
    .await;
    // One client, echoed: 395 bytes in, its server's greeting and 395 out.
    let mut c = Client::connect(p.addr).await;
    c.ping(&"x".repeat(394)).await;
    assert_eq!(c.upstream, home, "the client went to its home");
    let used = addrs
        .iter()
        .find(|(name, _)| *name == home)
        .map(|(_, a)| a.to_string())
        .unwrap();
    let v = status_json_until(admin, "the client's bytes counted", |v| {
        upstream(v, &used)["active_connections"] == 1 && upstream(v, &used)["bytes_in"] == 395
    })
    .await;

    let (code, table) = tokio::task::spawn_blocking(move || cplb_status(admin, &[]))
        .await
        .unwrap();
    println!("{table}");
    assert_eq!(code, 0, "{table}");
    let doc = block("status");
    let doc_cmds = commands(&doc.body);
    assert_eq!(doc_cmds.len(), 1, "{}: one `$ cplb status`", doc.at);
    assert_eq!(doc_cmds[0].0, "cplb status", "{}", doc.at);
    let (doc_head, doc_rows) = table_shape(&doc_cmds[0].1);
    let (head, rows) = table_shape(&table);
    assert_eq!(head, doc_head, "{}: header lines", doc.at);
    assert_eq!(rows, doc_rows, "{}: rows", doc.at);

    // The JSON: the same keys, and the down upstream as shown.
    let doc = block("status-json");
    let shown: Value =
        serde_json::from_str(&doc.body).unwrap_or_else(|e| panic!("{}: {e}", doc.at));
    let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&shown, "", &mut want);
    key_paths(&v, "", &mut got);
    assert_eq!(want, got, "{}: keys", doc.at);
    let shown_down = &shown["upstreams"][0];
    let real_down = upstream(&v, &down);
    for k in [
        "source",
        "state",
        "usable",
        "changed_by",
        "reason",
        "active_connections",
    ] {
        assert_eq!(shown_down[k], real_down[k], "{}: {k}", doc.at);
    }
    assert_eq!(
        shown_down["last_check"]["error"], real_down["last_check"]["error"],
        "{}",
        doc.at
    );
    drop(c);

    // A refused reload: the documented lines, in the real header.
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(
        &p.config_path,
        good.replace("interval: 300ms", "interval: soon"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    status_json_until(admin, "the refused reload", |v| {
        v["last_load"]["result"] == "failure"
    })
    .await;
    let (_, table) = tokio::task::spawn_blocking(move || cplb_status(admin, &[]))
        .await
        .unwrap();
    println!("{table}");
    let doc = block("status-reload-failed");
    let doc_path = "/etc/cplb/cplb.yaml";
    let real: Vec<String> = table.lines().map(|l| normalise(l, &path)).collect();
    for line in doc.body.lines() {
        let want = normalise(line, doc_path);
        assert!(
            real.contains(&want),
            "{}: {want:?} not in\n{real:#?}",
            doc.at
        );
    }
}

/// A raw HTTP/1.1 GET: the status line and headers (without `date`), and
/// the body.
fn http_get(addr: SocketAddr, path: &str) -> (Vec<String>, String) {
    use std::io::{BufRead, Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin endpoint");
    // What curl sends: no `Connection: close`, so the answer's headers are
    // those a keep-alive client sees.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut head = Vec::new();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("content-length:") {
            len = n.trim().parse().unwrap();
        }
        if !lower.starts_with("date:") {
            head.push(line);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// The admin endpoint of a cplb whose two upstreams refused a connect, as
/// shown: `/readyz` (status, headers but the date, body) and one entry of
/// `/upstreams` (keys, and the values a refused connect sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_answers_as_documented() {
    // The documented addresses: nothing listens on ports 1 and 2.
    let yaml = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nhash:\n  node_id: worker-1\nupstreams:\n  - address: 127.0.0.1:1\n    weight: 5\n    fail_timeout: 3s\n  - address: 127.0.0.1:2\n    weight: 5\n    fail_timeout: 3s\n";
    let mut p = CplbProcess::spawn(yaml, Options::default());
    let admin = p.admin.expect("admin enabled");
    // A client whose connects are refused by both marks both down.
    let c = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let end = tokio::time::Instant::now() + DEADLINE;
    let (head, body) = loop {
        let (head, body) = tokio::task::spawn_blocking(move || http_get(admin, "/readyz"))
            .await
            .unwrap();
        if body.matches("marked down").count() == 2 {
            break (head, body);
        }
        assert!(
            tokio::time::Instant::now() < end,
            "both marked down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(c);
    let doc = block("admin-readyz");
    let cmds = commands(&doc.body);
    assert_eq!(cmds.len(), 1, "{}", doc.at);
    let (want_head, want_body) = cmds[0]
        .1
        .split_once("\n\n")
        .expect("headers, a blank line, a body");
    let want_head: Vec<&str> = want_head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    assert_eq!(head, want_head, "{}: status line and headers", doc.at);
    assert_eq!(body, want_body, "{}: body", doc.at);

    let doc = block("admin-upstreams");
    let shown: Value =
        serde_json::from_str(&doc.body).unwrap_or_else(|e| panic!("{}: {e}", doc.at));
    let (_, body) = tokio::task::spawn_blocking(move || http_get(admin, "/upstreams"))
        .await
        .unwrap();
    let real: Value = serde_json::from_str(&body).unwrap();
    let real = real
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == shown["address"])
        .unwrap_or_else(|| panic!("{}: {} not in {real:#}", doc.at, shown["address"]));
    let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&shown, "", &mut want);
    key_paths(real, "", &mut got);
    assert_eq!(want, got, "{}: keys", doc.at);
    for k in [
        "state",
        "usable",
        "weight",
        "resolved",
        "active_connections",
    ] {
        assert_eq!(shown[k], real[k], "{}: {k}", doc.at);
    }
    for k in [
        "state",
        "max_fails",
        "recent_failures",
        "fail_timeout_seconds",
    ] {
        assert_eq!(
            shown["passive"][k], real["passive"][k],
            "{}: passive.{k}",
            doc.at
        );
    }
    assert_eq!(
        shown["active"]["state"], real["active"]["state"],
        "{}",
        doc.at
    );

    // The log lines shown: start-up, a refused connect, a refused reload.
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, good.replacen("weight: 5", "weight: 0", 1)).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_for_log("config reload refused");
    let path = p.config_path.display().to_string();
    let real: Vec<String> = p
        .logs()
        .lines()
        .map(|l| log_shape(&l.replace(&path, "/etc/cplb/cplb.yaml")))
        .collect();
    let doc = block("logs");
    for line in doc.body.lines() {
        let want = log_shape(line);
        assert!(
            real.contains(&want),
            "{}: {want:?} not in\n{real:#?}",
            doc.at
        );
    }
}

/// A text log line without its time and the module that logged it, with
/// numbers as `N`.
fn log_shape(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let (level, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = match rest.split_once(": ") {
        Some((target, msg)) if target.starts_with("cplb") => msg,
        _ => rest,
    };
    normalise(&format!("{level} {rest}"), "\0")
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as dashes; repeats get `-1`, `-2`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of `[text](target)` links outside code, with their line.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in markdown.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn relative_links_lead_to_existing_files_and_headings() {
    let mut broken = Vec::new();
    let mut checked = 0;
    let mut pending_seen = BTreeSet::new();
    for file in checked_files() {
        let text = read(&file);
        let dir = Path::new(&file).parent().unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let rel = if path.is_empty() {
                PathBuf::from(&file)
            } else {
                normalise_path(&dir.join(path))
            };
            let rel_str = rel.display().to_string();
            if !root().join(&rel).exists() {
                if PENDING.contains(&rel_str.as_str()) {
                    pending_seen.insert(rel_str);
                    continue;
                }
                broken.push(format!("{file}:{line}: {target}: no file {rel_str}"));
                continue;
            }
            if let Some(a) = anchor
                && rel_str.ends_with(".md")
                && !anchors(&read(&rel_str)).contains(a)
            {
                broken.push(format!(
                    "{file}:{line}: {target}: no heading #{a} in {rel_str}"
                ));
            }
        }
    }
    println!("{checked} relative links checked");
    for p in PENDING {
        if root().join(p).exists() {
            broken.push(format!(
                "{p} exists now: remove it from PENDING in tests/docs.rs"
            ));
        } else if pending_seen.contains(*p) {
            println!("{p}: linked, not in this checkout yet (PENDING)");
        }
    }
    assert!(broken.is_empty(), "\n{}", broken.join("\n"));
}

/// `docs/../README.md` as `README.md`.
fn normalise_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}
