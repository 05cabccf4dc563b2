//! No panic on any input: random text, nginx-ish token soup and generated
//! stream configs go through the nginx lexer, parser and `import-nginx`
//! conversion; any YAML it emits goes through cplb's own config validation.
//! The property is always: `Ok` or a typed error naming a line of the input,
//! never a panic, a hang or a stack overflow.
//!
//! Cases per property: 256 by default (a few seconds in debug);
//! `PROPTEST_CASES=20000` for a long run.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Outcome counts, printed so a run shows both sides were reached.
struct Counts {
    name: &'static str,
    ok: AtomicUsize,
    err: AtomicUsize,
    valid_yaml: AtomicUsize,
    slowest_us: AtomicUsize,
}

impl Counts {
    fn new(name: &'static str) -> Counts {
        Counts {
            name,
            ok: AtomicUsize::new(0),
            err: AtomicUsize::new(0),
            valid_yaml: AtomicUsize::new(0),
            slowest_us: AtomicUsize::new(0),
        }
    }

    fn print(&self) {
        println!(
            "{}: {} ok ({} emitted configs valid), {} errors, slowest case {:?}",
            self.name,
            self.ok.load(Relaxed),
            self.valid_yaml.load(Relaxed),
            self.err.load(Relaxed),
            Duration::from_micros(self.slowest_us.load(Relaxed) as u64)
        );
    }
}

/// Converts `text`; an error must name a line of the input, and emitted
/// YAML must pass cplb's config validation: import never hands the user a
/// config that `--check` refuses.
fn check(text: &str, counts: &Counts) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let result = cplb::import::convert(text);
    let lines = text.lines().count().max(1) + 1;
    match result {
        Ok(c) => {
            counts.ok.fetch_add(1, Relaxed);
            for w in &c.warnings {
                prop_assert!(w.starts_with("line "), "warning without a line: {w}");
            }
            match cplb::Config::parse(&c.yaml, Path::new("imported.yaml")) {
                Ok(_) => {
                    counts.valid_yaml.fetch_add(1, Relaxed);
                }
                Err(e) => prop_assert!(
                    false,
                    "import emitted a config that does not validate: {e}\n--- nginx\n{text}\n--- yaml\n{}",
                    c.yaml
                ),
            }
        }
        Err(e) => {
            counts.err.fetch_add(1, Relaxed);
            prop_assert!(
                (1..=lines).contains(&e.line()),
                "line {} outside 1..={lines}: {e}",
                e.line()
            );
        }
    }
    let us = start.elapsed().as_micros() as usize;
    counts.slowest_us.fetch_max(us, Relaxed);
    // Generous: a hang, not a slow machine, is what this catches.
    prop_assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}

/// Words nginx stream configs are made of, and values that broke parsers
/// before: huge numbers and durations, octal-looking addresses, empty ports.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "stream", "upstream", "server", "hash", "listen", "proxy_pass", "events", "http",
            "worker_processes", "proxy_connect_timeout", "proxy_timeout", "proxy_next_upstream",
            "proxy_next_upstream_tries", "proxy_protocol", "least_conn", "random", "zone",
            "resolver", "ssl_preread", "worker_shutdown_timeout", "consistent", "$remote_addr",
            "$binary_remote_addr", "backup", "down", "reuseport", "udp", "ssl", "on", "off",
            "backlog=1024", "weight=0", "weight=5", "weight=999999999999", "max_fails=0",
            "max_fails=3", "max_fails=-1", "fail_timeout=10s", "fail_timeout=0",
            "fail_timeout=300000000000y", "1ms", "3000s", "1y", "99999999999999999999d",
            "127.0.0.1:6443", "10.0.0.1:6443", "010.0.0.1:6443", "999.0.0.1:6443", "[::1]:6443",
            "[::1]", "[::", "::1:6443", "m1.example:6443", "m1.example", ":6443", "6443", "0",
            "65536", "localhost:0", "unix:/run/x.sock", "k", "#", "\\", "\"\"", "''",
        ]).prop_map(String::from),
        1 => "[a-z0-9_.:=$\\[\\]-]{1,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// Token soup: words, braces, semicolons, quotes, newlines and comments in
/// any order.
fn soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        6 => word(),
        2 => Just("{".to_string()),
        2 => Just("}".to_string()),
        3 => Just(";".to_string()),
        1 => Just("\"".to_string()),
        1 => Just("'".to_string()),
        2 => Just("\n".to_string()),
        1 => Just("# comment\n".to_string()),
    ];
    prop::collection::vec(
        (token, prop::sample::select(vec!["", " ", "\t", "\n"])),
        0..80,
    )
    .prop_map(|ts| ts.into_iter().map(|(t, sep)| t + sep).collect())
}

fn pick(v: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(v).prop_map(String::from).boxed()
}

/// Mostly plausible, sometimes any word: plausible values reach the
/// conversion and emit; the rest test its refusals.
fn or_word(s: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![12 => s, 1 => word()].boxed()
}

fn duration() -> BoxedStrategy<String> {
    or_word(pick(&[
        "1ms",
        "500ms",
        "3s",
        "10s",
        "1m",
        "1h",
        "1d",
        "3000s",
        "0",
        "0s",
        "1y",
        "365d",
        "99999999999d",
        "300000000000y",
        "5",
        "1h30m",
    ]))
}

fn address() -> BoxedStrategy<String> {
    or_word(pick(&[
        "10.0.0.1:6443",
        "10.0.0.2:6443",
        "192.168.1.10:443",
        "[fd00::1]:6443",
        "m1.example:6443",
        "m2.example:6443",
        "010.0.0.1:6443",
        "999.0.0.1:6443",
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "[::1]:6443",
        "localhost:6443",
    ]))
}

fn server_param() -> BoxedStrategy<String> {
    or_word(
        prop_oneof![
            (0u64..20).prop_map(|n| format!("weight={n}")),
            Just("weight=99999999999".to_string()),
            (0u64..10).prop_map(|n| format!("max_fails={n}")),
            duration().prop_map(|d| format!("fail_timeout={d}")),
            pick(&["backup", "down", "resolve", "service=x"]),
        ]
        .boxed(),
    )
}

fn line(name: &'static str, args: BoxedStrategy<Vec<String>>) -> BoxedStrategy<String> {
    args.prop_map(move |a| format!("{name} {};", a.join(" ")))
        .boxed()
}

fn upstream_line() -> BoxedStrategy<String> {
    prop_oneof![
        4 => line(
            "server",
            (address(), prop::collection::vec(server_param(), 0..4))
                .prop_map(|(a, mut p)| {
                    p.insert(0, a);
                    p
                })
                .boxed()
        ),
        1 => line(
            "hash",
            (
                or_word(pick(&["$remote_addr", "$binary_remote_addr", "$server_addr"])),
                prop::option::of(pick(&["consistent"])),
            )
                .prop_map(|(k, c)| std::iter::once(k).chain(c).collect())
                .boxed()
        ),
        1 => line("least_conn", Just(vec![]).boxed()),
        1 => line("random", prop::collection::vec(pick(&["two", "least_conn"]), 0..2).boxed()),
        1 => line("zone", prop::collection::vec(word(), 1..3).boxed()),
    ]
    .boxed()
}

fn server_line() -> BoxedStrategy<String> {
    let listen_addr = or_word(pick(&[
        "127.0.0.1:6443",
        "127.0.0.1:0",
        "6443",
        "8443",
        "[::1]:6443",
        "0.0.0.0:6443",
        "localhost:6443",
        "127.0.0.1",
        "unix:/run/x.sock",
    ]));
    let listen_param = or_word(pick(&[
        "reuseport",
        "backlog=1024",
        "backlog=0",
        "udp",
        "ssl",
        "so_keepalive=on",
    ]));
    prop_oneof![
        3 => line(
            "listen",
            (listen_addr, prop::collection::vec(listen_param, 0..3))
                .prop_map(|(a, mut p)| {
                    p.insert(0, a);
                    p
                })
                .boxed()
        ),
        1 => line("proxy_pass", or_word(pick(&["u", "v"])).prop_map(|w| vec![w]).boxed()),
        1 => line("proxy_connect_timeout", duration().prop_map(|d| vec![d]).boxed()),
        1 => line("proxy_timeout", duration().prop_map(|d| vec![d]).boxed()),
        1 => line("proxy_next_upstream", pick(&["on", "off", "maybe"]).prop_map(|w| vec![w]).boxed()),
        1 => line("proxy_next_upstream_tries", or_word(pick(&["0", "2", "99999999999"])).prop_map(|w| vec![w]).boxed()),
        1 => line("proxy_protocol", pick(&["on", "off"]).prop_map(|w| vec![w]).boxed()),
        1 => line("ssl_preread", pick(&["on", "off"]).prop_map(|w| vec![w]).boxed()),
    ]
    .boxed()
}

/// A stream config shaped like the real ones, with random arguments and
/// directives in random order: many cases get through the conversion.
fn stream_config() -> impl Strategy<Value = String> {
    let stream_line = prop_oneof![
        line(
            "proxy_connect_timeout",
            duration().prop_map(|d| vec![d]).boxed()
        ),
        line("proxy_timeout", duration().prop_map(|d| vec![d]).boxed()),
        line("resolver", prop::collection::vec(address(), 1..3).boxed()),
    ];
    let top_line = prop_oneof![
        line(
            "worker_processes",
            or_word(pick(&["auto", "2"])).prop_map(|w| vec![w]).boxed()
        ),
        line(
            "worker_shutdown_timeout",
            duration().prop_map(|d| vec![d]).boxed()
        ),
        line(
            "pid",
            pick(&["/run/nginx.pid"]).prop_map(|w| vec![w]).boxed()
        ),
    ];
    (
        prop::collection::vec(top_line, 0..3),
        prop::collection::vec(stream_line, 0..3),
        prop::collection::vec(upstream_line(), 0..6),
        prop::collection::vec(server_line(), 0..6),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(top, stream, ups, srv, proper)| {
            // Most cases get a real upstream name and a real listen.
            let (mut ups, mut srv) = (ups, srv);
            if proper {
                ups.push("server 10.0.0.1:6443;".into());
                srv.push("listen 127.0.0.1:6443;".into());
                srv.push("proxy_pass u;".into());
            }
            format!(
                "{}\nstream {{\n{}\nupstream u {{\n{}\n}}\nserver {{\n{}\n}}\n}}\n",
                top.join("\n"),
                stream.join("\n"),
                ups.join("\n"),
                srv.join("\n")
            )
        })
}

/// Runs `cases()` cases of `strategy`, prints the counts and fails on the
/// first counterexample (shrunk) or when only one side was ever reached.
fn run<S: Strategy<Value = String>>(name: &'static str, strategy: S, need_ok: bool) {
    let counts = Counts::new(name);
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases())
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |text| check(&text, &counts));
    counts.print();
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    assert!(counts.err.load(Relaxed) > 0, "{name}: no case was refused");
    if need_ok {
        assert!(counts.ok.load(Relaxed) > 0, "{name}: no case converted");
    }
}

#[test]
fn random_text_never_panics() {
    run("random text", any::<String>(), false);
}

#[test]
fn token_soup_never_panics() {
    run("token soup", soup(), false);
}

/// Long runs of opening and closing blocks: depth around and beyond the
/// parser's cap, unbalanced either way.
fn nesting() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        5 => Just("a {\n"),
        3 => Just("}\n"),
        1 => Just("b;\n"),
        1 => Just("stream {\n"),
    ];
    prop::collection::vec(piece, 0..600).prop_map(|v| v.concat())
}

#[test]
fn deep_and_unbalanced_nesting_never_panics() {
    run("nesting", nesting(), false);
}

#[test]
fn generated_stream_configs_never_panic() {
    run("stream configs", stream_config(), true);
}

/// Text as an nginx name or host may hold it: any character, with line
/// breaks of every kind, controls, quotes and YAML syntax over-represented.
fn nasty_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => any::<char>(),
        3 => prop::sample::select(vec!['a', 'm', '1', '.', '-', ' ']),
        4 => prop::sample::select(vec![
            '\n', '\r', '\t', '\u{1b}', '\u{0}', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}',
            '\u{feff}', '"', '\'', '\\', ':', '#', '-', '{', '}', '[', ']', ',', '&', '*', '!',
            '|', '>', '%', '@', '`', ';',
        ]),
    ];
    prop::collection::vec(c, 1..40).prop_map(String::from_iter)
}

/// `text` as one quoted nginx word: only `"` and `\` need escaping.
fn nginx_quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn stream_with(name: &str, host: &str) -> String {
    let n = nginx_quoted(name);
    format!(
        "stream {{\n  upstream {n} {{ server {}; }}\n  server {{ listen 127.0.0.1:6443; proxy_pass {n}; }}\n}}\n",
        nginx_quoted(host)
    )
}

/// The YAML of `c` read back: exactly the keys a one-server conversion
/// has, and the one upstream with exactly `address`, equal to `address`.
fn round_trips(c: &cplb::import::Conversion, address: &str) -> Result<(), TestCaseError> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&c.yaml)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", c.yaml)))?;
    let keys: Vec<&str> = v
        .as_mapping()
        .ok_or_else(|| TestCaseError::fail(format!("not a mapping:\n{}", c.yaml)))?
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    prop_assert_eq!(
        &keys,
        &["listen", "admin", "hash", "upstreams"],
        "{}",
        c.yaml
    );
    let ups = v["upstreams"].as_sequence().cloned().unwrap_or_default();
    prop_assert_eq!(ups.len(), 1, "{}", c.yaml);
    let u = ups[0].as_mapping().cloned().unwrap_or_default();
    prop_assert_eq!(u.len(), 1, "{}", c.yaml);
    prop_assert_eq!(u["address"].as_str(), Some(address), "{}", c.yaml);
    prop_assert!(
        cplb::Config::parse(&c.yaml, Path::new("imported.yaml")).is_ok(),
        "{}",
        c.yaml
    );
    Ok(())
}

/// Finding 15 of issue 19: a quoted upstream name with a newline injected
/// a top-level key into the output. Any name converts, and the output has
/// exactly the keys it should (the name lives only in a comment).
#[test]
fn any_upstream_name_round_trips() {
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases())
    });
    let result = runner.run(&nasty_text(), |name| {
        let c = cplb::import::convert(&stream_with(&name, "10.0.0.7:6443"))
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        round_trips(&c, "10.0.0.7:6443")
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Any server text is refused, or emitted as exactly that address.
#[test]
fn any_server_host_text_is_refused_or_round_trips() {
    let (ok, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases())
    });
    let host = prop_oneof![
        2 => "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,8}){0,3}:[0-9]{1,5}",
        1 => "\\[[0-9a-f:]{2,12}\\]:[0-9]{1,5}",
        2 => nasty_text().prop_map(|h| format!("{h}:6443")),
        1 => nasty_text().prop_map(|h| format!("m{h}.example:6443")),
        1 => nasty_text(),
    ];
    let result = runner.run(&host, |host| {
        match cplb::import::convert(&stream_with("m", &host)) {
            Ok(c) => {
                ok.fetch_add(1, Relaxed);
                round_trips(&c, &host)?;
            }
            Err(_) => {
                refused.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    });
    println!(
        "server text: {} emitted, {} refused",
        ok.load(Relaxed),
        refused.load(Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        ok.load(Relaxed) > 0 && refused.load(Relaxed) > 0,
        "one side never reached"
    );
}
