//! Log lines of the `cplb` binary: JSON logs carry real JSON values, state
//! changes are logged once, and lines that report nothing are absent.

mod common;

use common::process::*;
use common::*;
use serde_json::Value;

/// Fields that hold lists, and fields that hold numbers, wherever they occur.
const LISTS: [&str; 9] = [
    "listen",
    "upstreams",
    "added",
    "removed",
    "modified",
    "settings",
    "fields",
    "dirs",
    "addrs",
];
const NUMBERS: [&str; 11] = [
    "workers",
    "open",
    "closed",
    "left",
    "max_fails",
    "retry_after_ms",
    "grace_seconds",
    "failures",
    "failing_seconds",
    "bytes_to_upstream",
    "bytes_to_client",
];

/// Every line parsed as JSON, each field checked for its JSON type; Rust
/// debug text (`[…]`, `Some(…)`, `Foo { … }`) in a string fails.
fn parse_all(logs: &str) -> Vec<Value> {
    let mut out = vec![];
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let fields = v["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("no fields: {line}"));
        for (k, f) in fields {
            if LISTS.contains(&k.as_str()) {
                assert!(f.is_array(), "{k} is not an array: {line}");
            }
            if NUMBERS.contains(&k.as_str()) {
                assert!(f.is_number(), "{k} is not a number: {line}");
            }
            if let Some(s) = f.as_str() {
                let debug = s.starts_with('[') || s.starts_with("Some(") || s.contains(" { ");
                assert!(!debug, "{k} holds Rust debug text: {line}");
            }
        }
        out.push(v);
    }
    out
}

fn with_message<'a>(lines: &'a [Value], m: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|s| s.contains(m))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_json_values_and_no_empty_reports() {
    let a = FakeUpstream::start("a").await;
    let dead = refused_addr();
    let base = |interval: &str| {
        TestConfig::new(&[a.addr, dead])
            .upstream_named("cplb-test-name.invalid:6443")
            .fail_timeout(None)
            .health_check(
                HealthCheck::tcp()
                    .interval(interval)
                    .timeout("200ms")
                    .fall(1)
                    .rise(1),
            )
            .yaml()
    };
    let mut p = CplbProcess::spawn(
        &base("100ms"),
        Options {
            args: vec!["--log-format".into(), "json".into()],
            // Retries log at debug: seen here, so the test knows they ran.
            log_filter: Some("info,cplb::resolve=debug".into()),
            ..Options::default()
        },
    );
    // The active check marks the dead upstream down with no connection
    // open: nothing to close, so no "closed client connections" line.
    p.wait_for_log("upstream marked down");
    // The name keeps failing: one WARN; the first two retries (0.5 s and
    // 1.5 s after start-up) stay at debug.
    wait_until("two retries", || {
        p.count_logs("\"level\":\"DEBUG\"") >= 2 && p.count_logs("could not resolve upstream") >= 3
    })
    .await;
    // A reload that changes only the health check says so.
    std::fs::write(&p.config_path, base("150ms")).unwrap();
    p.wait_for_log("config reloaded");
    // A proxied connection, then the drain.
    let mut c = Client::connect(p.addr).await;
    c.ping("hello").await;
    drop(c);
    p.signal(libc::SIGTERM);
    p.wait_for_log("cplb stopped");
    assert_eq!(p.wait_exit(), Some(0));

    let lines = parse_all(&p.logs());
    println!("{} JSON lines parsed", lines.len());
    let started = with_message(&lines, "cplb started");
    assert_eq!(
        started[0]["fields"]["upstreams"].as_array().unwrap().len(),
        3
    );
    let reloaded = with_message(&lines, "config reloaded");
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    let f = &reloaded[0]["fields"];
    assert_eq!(f["settings"], serde_json::json!(["health_check.interval"]));
    assert!(f.get("modified").is_none(), "empty list logged: {f}");
    let tries = with_message(&lines, "could not resolve upstream");
    let warned: Vec<_> = tries.iter().filter(|v| v["level"] == "WARN").collect();
    println!(
        "{} failed resolutions, {} warned",
        tries.len(),
        warned.len()
    );
    assert!(tries.len() >= 3);
    assert_eq!(warned.len(), 1, "one WARN per failing episode: {warned:?}");
    for silent in ["closed client connections", "keeping its connections"] {
        assert!(
            with_message(&lines, silent).is_empty(),
            "a line that reports nothing: {silent}"
        );
    }
    let drain = with_message(&lines, "draining connections");
    assert!(drain[0]["fields"]["grace_seconds"].is_number());
}

/// Finding 16 of issue 19: text logs and `-t` carried control characters
/// from input raw. A `NODE_NAME` with a newline and an ESC forged a log
/// line and drove the reader's terminal; a YAML key did the same in a
/// refused reload's log line and in `-t`. Each must come out escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_input_are_escaped_in_text_logs_and_check_output() {
    const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR cplb::server: forged";
    let a = FakeUpstream::start("a").await;
    let yaml = TestConfig::new(&[a.addr]).hash_key("node").yaml();
    let node = format!("worker-1\n{FORGED}\x1b[31m");
    let mut p = CplbProcess::spawn(
        &yaml,
        Options {
            env: vec![("NODE_NAME".into(), node)],
            ..Default::default()
        },
    );
    // A key YAML decodes to a newline and an ESC, refused on reload.
    let bad = format!("{yaml}\"bad\\u001b[31m\\n{FORGED}\": 1\n");
    std::fs::write(&p.config_path, &bad).unwrap();
    let refused = p.wait_for_log("config reload refused");
    let logs = p.logs();
    println!("{logs}");
    assert!(!logs.contains('\x1b'), "a raw ESC on stderr:\n{logs}");
    assert!(
        !logs.lines().any(|l| l.starts_with(FORGED)),
        "a forged line:\n{logs}"
    );
    let started = p.wait_for_log("cplb started");
    assert!(
        started.contains(
            r"node_id=worker-1\n2026-01-01T00:00:00.000000Z ERROR cplb::server: forged\u{1b}[31m"
        ),
        "{started}"
    );
    assert!(refused.contains(r"bad\u{1b}[31m\n2026-01-01"), "{refused}");

    // `-t` prints the same refusal on stderr.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
        .args(["-t", "-c"])
        .arg(&p.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("-t: {stderr}");
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.contains(&0x1b), "a raw ESC from -t: {stderr}");
    assert!(
        stderr.lines().all(|l| l.starts_with("cplb: ")),
        "a forged line from -t: {stderr}"
    );
    assert!(stderr.contains(r"bad\u{1b}[31m\n2026-01-01"), "{stderr}");
}
