//! Property: any YAML shaped like a config (random values in every field,
//! huge and negative numbers, odd durations, nulls, wrong types) and any
//! bytes go through parse, validate and the snapshot build as `Ok` or a
//! typed `ConfigError`, never a panic or a hang. And what validates can be used as
//! the proxy uses it: every duration can be added to `Instant::now()`.
//!
//! Case count: `PROPTEST_CASES` (default 256 here, a few seconds in debug).

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(65535), Just(65536)]
            .prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        ".{0,20}".prop_map(Value::String),
    ]
}

fn duration() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => (1u64..1000, prop::sample::select(vec!["ms", "s", "m"]))
            .prop_map(|(n, u)| s(&format!("{n}{u}"))),
        1 => (any::<u64>(), prop::sample::select(vec![
            "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", ""
        ]))
            .prop_map(|(n, u)| s(&format!("{n}{u}"))),
        1 => (0u64..100_000, prop::sample::select(vec!["ms", "s", "m", "h", "d", "y"]))
            .prop_map(|(n, u)| s(&format!("{n}{u}"))),
        1 => prop::sample::select(vec![
            "300000000000y",
            "18446744073709551615s",
            "584942417355y",
            "1y",
            "366d",
            "1d 1s",
            "0s",
            "-1s",
            "1.5s",
            "",
        ])
        .prop_map(s),
        1 => scalar(),
    ]
}

fn address() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:1",
            "127.0.0.1:0",
            "0.0.0.0:8081",
            "[::1]:6443",
            "[::]:8081",
            "010.0.0.1:6443",
            "999.0.0.1:6443",
            "1.2.3:6443",
            "0x0a.0.0.1:1",
            "https://10.0.0.1:6443",
            "a.example:6443",
            "a:99999",
            "",
            "off",
        ])
        .prop_map(s),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| s(&format!("{}.{}.{}.{}:{p}", ip[0], ip[1], ip[2], ip[3]))),
        "[a-z0-9.:\\[\\]-]{0,30}".prop_map(Value::String),
        scalar(),
    ]
}

/// A random value of any shape, nested a little.
/// Mostly a usable local address, sometimes anything address-like.
fn local() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (1u16..).prop_map(|p| s(&format!("127.0.0.1:{p}"))),
        1 => address(),
    ]
    .boxed()
}

fn anything() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..4).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect())
            }),
        ]
    })
}

/// A mapping with a random subset of `fields`, plus sometimes a stray key.
fn section(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let n = fields.len();
    let (names, strategies): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (
        prop::collection::vec(prop::bool::weighted(0.3), n),
        strategies,
        prop::option::weighted(0.1, ("[a-z_]{1,10}", anything())),
    )
        .prop_map(move |(present, values, stray)| {
            let mut m = Mapping::new();
            for ((name, keep), v) in names.iter().zip(present).zip(values) {
                if keep {
                    m.insert(s(name), v);
                }
            }
            if let Some((k, v)) = stray {
                m.insert(Value::String(k), v);
            }
            Value::Mapping(m)
        })
        .boxed()
}

fn or_anything(st: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![30 => st, 1 => anything()].boxed()
}

/// Mostly a small in-range number, sometimes anything.
fn count() -> BoxedStrategy<Value> {
    prop_oneof![12 => (1i64..100).prop_map(|n| Value::Number(n.into())), 1 => scalar()].boxed()
}

fn upstream() -> BoxedStrategy<Value> {
    let addr = prop_oneof![
        12 => (0u8..20).prop_map(|n| s(&format!("u{n}.example:6443"))),
        1 => address(),
    ];
    let rest = section(vec![
        ("weight", count()),
        ("max_fails", count()),
        ("fail_timeout", duration().boxed()),
    ]);
    required(rest, "address", addr.boxed())
}

/// `doc` with `key` set in most cases: a document without its required
/// fields stops at the first error and reaches nothing else.
fn required(
    doc: BoxedStrategy<Value>,
    key: &'static str,
    v: BoxedStrategy<Value>,
) -> BoxedStrategy<Value> {
    (doc, prop::option::weighted(0.95, v))
        .prop_map(move |(mut doc, v)| {
            if let (Value::Mapping(m), Some(v)) = (&mut doc, v) {
                m.insert(s(key), v);
            }
            doc
        })
        .boxed()
}

fn health_check() -> BoxedStrategy<Value> {
    let tls = section(vec![
        (
            "ca_file",
            prop::sample::select(vec!["/nonexistent", "/etc/hostname", ""])
                .prop_map(s)
                .boxed(),
        ),
        (
            "insecure_skip_verify",
            or_anything(any::<bool>().prop_map(Value::Bool).boxed()),
        ),
        ("server_name", scalar().boxed()),
    ]);
    section(vec![
        ("interval", duration().boxed()),
        ("timeout", duration().boxed()),
        ("rise", count()),
        ("fall", count()),
        (
            "mode",
            prop::sample::select(vec!["tcp", "https", "http"])
                .prop_map(s)
                .boxed(),
        ),
        ("path", or_anything(Just(s("/readyz")).boxed())),
        (
            "close_on_down",
            or_anything(any::<bool>().prop_map(Value::Bool).boxed()),
        ),
        ("drain_grace", duration().boxed()),
        ("tls", or_anything(tls)),
    ])
}

fn failback() -> BoxedStrategy<Value> {
    section(vec![
        (
            "enabled",
            or_anything(any::<bool>().prop_map(Value::Bool).boxed()),
        ),
        ("settle", duration().boxed()),
        ("spread", duration().boxed()),
        ("max_per_second", count()),
    ])
}

fn config() -> BoxedStrategy<Value> {
    let listen = prop_oneof![
        local(),
        prop::collection::vec(local(), 0..3).prop_map(Value::Sequence),
    ];
    let hash = section(vec![
        (
            "key",
            prop::sample::select(vec!["node", "remote_addr", "connection", "x"])
                .prop_map(s)
                .boxed(),
        ),
        ("node_id", scalar().boxed()),
    ]);
    let mut fields = vec![
        ("listen", listen.boxed()),
        ("workers", count()),
        ("backlog", count()),
        ("max_connections", count()),
        ("connect_timeout", duration().boxed()),
        ("idle_timeout", duration().boxed()),
        ("next_upstream_tries", count()),
        ("shutdown_grace", duration().boxed()),
        ("hash", or_anything(hash)),
        ("admin", local()),
        ("health_check", or_anything(health_check())),
        ("failback", or_anything(failback())),
    ];
    // Keep most documents near-valid, so validation is reached often.
    fields
        .iter_mut()
        .for_each(|(_, st)| *st = or_anything(st.clone()));
    let upstreams = prop_oneof![
        20 => prop::collection::vec(upstream(), 1..4).prop_map(Value::Sequence),
        1 => Just(Value::Sequence(vec![])),
        1 => anything(),
    ];
    required(section(fields), "upstreams", upstreams.boxed())
}

/// Parse, validate, build the snapshot, and use the durations the way the
/// proxy does. A panic anywhere fails the property.
fn exercise(text: &str) {
    // A refusal is a typed `ConfigError`: the signature says so.
    let Ok(config) = cplb::Config::parse(text, Path::new("prop.yaml")) else {
        return;
    };
    let metrics = cplb::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let mut table = cplb::upstream::StateTable::default();
    let built = cplb::snapshot::Snapshot::build(&config, &mut table, &metrics)
        .expect("a validated config fits the ring");
    let now = Instant::now();
    let s = &built.snapshot.settings;
    let mut durations = vec![
        s.connect_timeout,
        s.idle_timeout,
        s.shutdown_grace,
        s.failback.settle,
        s.failback.spread,
        s.failback_delay,
    ];
    assert!(
        s.failback_delay <= s.failback.spread,
        "the node's fail-back delay is within spread"
    );
    for u in &config.upstreams {
        durations.push(u.fail_timeout);
    }
    if let Some(hc) = &config.health_check {
        durations.extend([hc.interval, hc.timeout, hc.interval.mul_f64(1.1)]);
    }
    for d in durations {
        assert!(
            now.checked_add(d).is_some() && d <= Duration::from_secs(366 * 86400),
            "validated config has a duration of {d:?}:\n{text}"
        );
    }
    for u in &built.snapshot.upstreams {
        assert_eq!(
            u.policy.fail_timeout_ms as u128,
            u.config.fail_timeout.as_millis(),
            "fail_timeout truncated"
        );
    }
}

/// `exercise` on its own thread with a deadline: a hang fails the case
/// instead of stalling the run. The limit is generous (a case takes
/// milliseconds) so a loaded machine does not fail it.
fn no_panic_no_hang(text: String) {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let (tx, rx) = channel();
    let shown = text.clone();
    let worker = std::thread::spawn(move || {
        exercise(&text);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => worker.join().unwrap(),
        Err(RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(RecvTimeoutError::Timeout) => panic!("no result within 30 s:\n{shown}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Shrunk failures are printed; no regressions file in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_shaped_yaml_never_panics(doc in config()) {
        no_panic_no_hang(serde_yaml_ng::to_string(&doc).unwrap());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        no_panic_no_hang(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn random_yaml_text_never_panics(text in "[a-z_: \\n\\-\\[\\]{}0-9.\"'#~]{0,200}") {
        no_panic_no_hang(text);
    }
}
